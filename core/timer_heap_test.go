//go:build unix

package core

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// The heap must pop timers in (deadline, scheduling order) whatever mix of
// schedules, reschedules and removals came before.
func TestTimerHeapOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q timerHeap
	timers := make([]*Timer, 2000)
	for i := range timers {
		timers[i] = &Timer{idx: -1}
	}
	live := map[*Timer]bool{}
	for range 20000 {
		tm := timers[r.IntN(len(timers))]
		switch r.IntN(3) {
		case 0, 1:
			q.schedule(tm, int64(r.IntN(500)))
			live[tm] = true
		case 2:
			q.remove(tm)
			delete(live, tm)
		}
	}
	want := make([]*Timer, 0, len(live))
	for tm := range live {
		want = append(want, tm)
	}
	slices.SortFunc(want, func(a, b *Timer) int {
		if a.when != b.when {
			return int(a.when - b.when)
		}
		return int(a.seq - b.seq)
	})
	var got []*Timer
	for {
		tm := q.pop(1 << 62)
		if tm == nil {
			break
		}
		require.Equal(t, -1, tm.idx)
		got = append(got, tm)
	}
	require.Equal(t, want, got)
}

func TestTimerHeapPopRespectsNow(t *testing.T) {
	var q timerHeap
	a, b := &Timer{idx: -1}, &Timer{idx: -1}
	q.schedule(a, 10)
	q.schedule(b, 10)
	require.Nil(t, q.pop(9))
	when, ok := q.next()
	require.True(t, ok)
	require.EqualValues(t, 10, when)
	require.Same(t, a, q.pop(10), "ties fire in scheduling order")
	require.Same(t, b, q.pop(10))
	_, ok = q.next()
	require.False(t, ok)
	q.remove(a) // removing an unscheduled timer is harmless
}

func BenchmarkTimerScheduleCancel(b *testing.B) {
	var q timerHeap
	timers := make([]*Timer, 1<<16)
	for i := range timers {
		timers[i] = &Timer{idx: -1}
		q.schedule(timers[i], int64(i*7919%100000))
	}
	b.ResetTimer()
	for i := range b.N {
		tm := timers[i&(len(timers)-1)]
		q.schedule(tm, int64(i%100000))
		q.remove(tm)
		q.schedule(tm, int64(i%100000))
	}
}
