//go:build unix

package core

import (
	"math"
	"time"
)

// Timer is a one-shot timer on a service thread's sorted timer list (lws'
// lws_sorted_usec_list). Its function runs on the service thread's
// goroutine. Timers due at the same moment fire in the order they were
// scheduled. All methods are loop-only.
type Timer struct {
	t    *Thread
	fn   func()
	when int64 // nanoseconds on the thread's clock
	seq  uint64
	idx  int // position in the heap; -1 when not scheduled
}

// deadline is the clock reading d from now, saturating: a duration too
// long to add (math.MaxInt64, say) means "never" rather than wrapping
// round to the past and firing at once. d <= 0 is now.
func deadline(now int64, d time.Duration) int64 {
	if d <= 0 {
		return now
	}
	if now > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	return now + int64(d)
}

// AfterFunc schedules f to run on the thread's goroutine after d; the
// returned Timer stops or reschedules it. It is loop-only, as the Timer's
// methods are: from another goroutine, Post a function that calls it.
// A nil f is ErrInvalid.
func (t *Thread) AfterFunc(d time.Duration, f func()) (*Timer, error) {
	if f == nil {
		return nil, ErrInvalid
	}
	rel, err := t.own()
	if err != nil {
		return nil, err
	}
	tm := &Timer{t: t, fn: f, idx: -1}
	t.timers.schedule(tm, deadline(t.clock(), d))
	t.release(rel)
	return tm, nil
}

// Reset (re)schedules the timer to fire after d, whether or not it fired
// or was stopped.
func (tm *Timer) Reset(d time.Duration) error {
	rel, err := tm.t.own()
	if err != nil {
		return err
	}
	tm.t.timers.schedule(tm, deadline(tm.t.clock(), d))
	tm.t.release(rel)
	return nil
}

// Stop cancels the timer. It reports whether the timer was pending; a
// stopped timer never fires. Off the loop it returns ErrWrongGoroutine,
// after Destroy ErrDestroyed, and the timer is as it was (stop it from
// another goroutine inside Thread.Post).
func (tm *Timer) Stop() (bool, error) {
	rel, err := tm.t.own()
	if err != nil {
		return false, err
	}
	was := tm.idx >= 0
	tm.t.timers.remove(tm)
	tm.t.release(rel)
	return was, nil
}

// timerHeap is a 4-ary min-heap ordered by (when, seq). A 4-ary heap halves
// the depth of a binary one, which pays off with a million timers.
type timerHeap struct {
	h   []*Timer
	seq uint64
}

func (q *timerHeap) less(a, b *Timer) bool {
	return a.when < b.when || (a.when == b.when && a.seq < b.seq)
}

func (q *timerHeap) schedule(tm *Timer, when int64) {
	q.remove(tm)
	q.seq++
	tm.when, tm.seq = when, q.seq
	tm.idx = len(q.h)
	q.h = append(q.h, tm)
	q.up(tm.idx)
}

func (q *timerHeap) remove(tm *Timer) {
	i := tm.idx
	if i < 0 {
		return
	}
	last := len(q.h) - 1
	if i != last {
		q.h[i] = q.h[last]
		q.h[i].idx = i
	}
	q.h[last] = nil
	q.h = q.h[:last]
	tm.idx = -1
	if i != last {
		q.down(i)
		q.up(i)
	}
}

func (q *timerHeap) len() int { return len(q.h) }

// next returns the earliest deadline, or ok=false when none is scheduled.
func (q *timerHeap) next() (when int64, ok bool) {
	if len(q.h) == 0 {
		return 0, false
	}
	return q.h[0].when, true
}

// pop removes and returns the earliest timer if it is due at now.
func (q *timerHeap) pop(now int64) *Timer {
	if len(q.h) == 0 || q.h[0].when > now {
		return nil
	}
	tm := q.h[0]
	q.remove(tm)
	return tm
}

func (q *timerHeap) up(i int) {
	tm := q.h[i]
	for i > 0 {
		p := (i - 1) / 4
		if !q.less(tm, q.h[p]) {
			break
		}
		q.h[i] = q.h[p]
		q.h[i].idx = i
		i = p
	}
	q.h[i] = tm
	tm.idx = i
}

func (q *timerHeap) down(i int) {
	n := len(q.h)
	tm := q.h[i]
	for {
		c := 4*i + 1
		if c >= n {
			break
		}
		m := c
		for j := c + 1; j < c+4 && j < n; j++ {
			if q.less(q.h[j], q.h[m]) {
				m = j
			}
		}
		if !q.less(q.h[m], tm) {
			break
		}
		q.h[i] = q.h[m]
		q.h[i].idx = i
		i = m
	}
	q.h[i] = tm
	tm.idx = i
}
