//go:build unix

package conformance

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// neverEarly are the delays of the never-early checks, in scrambled order:
// most below a millisecond, where a wait rounded down to whole
// milliseconds, or a core that takes a timer due within some slack as due
// now, fires early; a few above.
var neverEarly = []time.Duration{
	600 * time.Microsecond, time.Microsecond, 3 * time.Millisecond, 100 * time.Microsecond,
	1500 * time.Microsecond, 20 * time.Microsecond, 999 * time.Microsecond, 250 * time.Microsecond,
	8 * time.Millisecond, 50 * time.Microsecond,
}

// earlyRig is one timer of every kind (Thread.AfterFunc, Timer.Reset,
// Conn.SetTimer, Conn.SetTimeout) for each of the neverEarly delays, and
// how long after it was scheduled each fired.
type earlyRig struct {
	h         *harness
	reused    []*core.Timer // one per delay, scheduled an hour away, for Reset
	timerOf   map[*core.Conn]string
	timeoutOf map[*core.Conn]string
	conns     []*core.Conn // per delay: one for SetTimer, one for SetTimeout
	// The rest is touched only by the goroutine servicing the loop.
	sched map[string]*timerSched
	fired map[string]time.Duration
	errs  []error
	want  int
	done  chan struct{}
}

func (s *suite) newEarlyRig(t *testing.T) *earlyRig {
	r := &earlyRig{timerOf: map[*core.Conn]string{}, timeoutOf: map[*core.Conn]string{},
		sched: map[string]*timerSched{}, fired: map[string]time.Duration{}, done: make(chan struct{})}
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonTimer:
			r.fire(r.timerOf[ev.Conn])
		case core.ReasonRawClose:
			if errors.Is(ev.Err, core.ErrTimeout) {
				r.fire(r.timeoutOf[ev.Conn])
			}
		}
		return nil
	}
	r.h = s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "early", Callback: cb}}})
	// Set up before the loop runs: nothing services the thread yet.
	for _, d := range neverEarly {
		name := fmt.Sprintf("Reset/%v", d)
		tm, err := r.h.th.AfterFunc(time.Hour, func() { r.fire(name) })
		require.NoError(t, err)
		r.reused = append(r.reused, tm)
		for _, way := range []struct {
			m    map[*core.Conn]string
			name string
		}{{r.timerOf, "SetTimer"}, {r.timeoutOf, "SetTimeout"}} {
			fd, _ := unixPair(t)
			c, err := r.h.ctx.AdoptFD(fd, "")
			require.NoError(t, err)
			r.conns = append(r.conns, c)
			way.m[c] = fmt.Sprintf("%s/%v", way.name, d)
		}
	}
	return r
}

func (r *earlyRig) fire(name string) {
	ts := r.sched[name]
	switch {
	case ts == nil:
		r.errs = append(r.errs, fmt.Errorf("%q fired, never scheduled", name))
		return
	case r.fired[name] != 0:
		r.errs = append(r.errs, fmt.Errorf("%q fired twice", name))
		return
	}
	r.fired[name] = max(time.Since(ts.before), 1) // 0 is "not fired"
	if len(r.fired) == r.want {
		close(r.done)
	}
}

// arm schedules every timer, each way interleaved with the others, and
// notes the time just before each call: the core's deadline is no earlier
// than that plus the delay.
func (r *earlyRig) arm() {
	th := r.h.th
	for i, d := range neverEarly {
		ways := []struct {
			name string
			f    func(name string) error
		}{
			{"AfterFunc", func(name string) error {
				_, err := th.AfterFunc(d, func() { r.fire(name) })
				return err
			}},
			{"Reset", func(string) error { return r.reused[i].Reset(d) }},
			{"SetTimer", func(string) error { return r.conns[2*i].SetTimer(d) }},
			{"SetTimeout", func(string) error { return r.conns[2*i+1].SetTimeout(d) }},
		}
		for _, w := range ways {
			name := fmt.Sprintf("%s/%v", w.name, d)
			ts := &timerSched{name: name, before: time.Now(), delay: d}
			r.sched[name] = ts
			if err := w.f(name); err != nil {
				r.errs = append(r.errs, fmt.Errorf("%s: %w", name, err))
			}
			ts.after = time.Now()
		}
	}
	r.want = len(r.sched)
}

// check runs once every timer fired. Without a running loop (the test
// services the thread itself) it reads what the passes left.
func (r *earlyRig) check(t *testing.T) {
	h := r.h
	var errs []error
	var fired map[string]time.Duration
	read := func() { errs, fired = r.errs, maps.Clone(r.fired) }
	if h.started {
		h.sync()
		h.do(read)
	} else {
		read()
	}
	require.Empty(t, errs)
	require.Len(t, fired, len(neverEarly)*4, "timers fired")
	for _, d := range neverEarly {
		for _, w := range []string{"AfterFunc", "Reset", "SetTimer", "SetTimeout"} {
			name := fmt.Sprintf("%s/%v", w, d)
			el, ok := fired[name]
			require.True(t, ok, "%s never fired", name)
			require.GreaterOrEqual(t, el, d, "%s fired %v after it was scheduled, before its delay", name, el)
		}
	}
	h.rec.verify(t)
}

// Checklist 14 and 16: no timer fires before its delay, measured by the
// monotonic clock from just before the call that scheduled it to its
// callback (TIMER, the RAW_CLOSE of SetTimeout, the AfterFunc function).
// Every way of scheduling one, with delays down to a microsecond:
//
//   - Post: scheduled from a posted function of a running loop;
//   - FromTimer: scheduled from a timer's function, while the core is
//     running the timers that were due (a core that fires what falls due
//     within some slack fires the shortest ones in that same run);
//   - ShortWaits: the application services the thread with passes far
//     shorter than the delays (its own loop woken for its own fds): each
//     pass ends before the deadline with nothing ready, and the core must
//     not take the timer as due;
//   - EarlyPoll: Run on the backend under test wrapped so that every Poll
//     with a timeout returns after half of it with nothing to report, as
//     EINTR or a wait rounded down to the mechanism's resolution do
//     (evlib.Backend.Poll waits at most its timeout): the core must wait
//     again rather than fire the timer it waited for. Skipped in foreign
//     mode, where the application's loop waits (ShortWaits covers it).
//
// A lower bound only: how late a timer fires is not asserted.
func (s *suite) testTimersNeverEarly(t *testing.T) {
	t.Run("Post", func(t *testing.T) {
		r := s.newEarlyRig(t)
		r.h.start()
		r.h.do(r.arm)
		waitCh(t, r.done, "every timer")
		r.check(t)
	})
	t.Run("FromTimer", func(t *testing.T) {
		r := s.newEarlyRig(t)
		r.h.start()
		var err error
		r.h.do(func() { _, err = r.h.th.AfterFunc(0, r.arm) })
		require.NoError(t, err)
		waitCh(t, r.done, "every timer")
		r.check(t)
	})
	t.Run("ShortWaits", func(t *testing.T) {
		r := s.newEarlyRig(t)
		r.arm() // nothing services the thread yet
		deadline := time.Now().Add(hang)
		for done := false; !done; {
			require.NoError(t, r.h.service(20*time.Microsecond))
			select {
			case <-r.done:
				done = true
			default:
				require.True(t, time.Now().Before(deadline), "conformance: not every timer fired within %v of short passes (hang guard)", hang)
			}
		}
		require.NoError(t, r.h.service(0)) // a timer firing twice would now
		r.check(t)
	})
	t.Run("EarlyPoll", func(t *testing.T) {
		es := s.earlyPollSuite(t)
		r := es.newEarlyRig(t)
		r.h.start()
		r.h.do(r.arm)
		waitCh(t, r.done, "every timer")
		r.check(t)
	})
}

// earlyPoll wraps a backend so that every Poll with a timeout waits half of
// it at most. The wrapper keeps the backend's own wakeup and buffered I/O
// (the core looks for them with type assertions) but not evlib.Looper, so
// the core's Run calls Poll in a loop, as it does for single passes.
type earlyPoll struct{ evlib.Backend }

func (b earlyPoll) Poll(timeout time.Duration) (int, error) {
	if timeout > 0 {
		timeout /= 2
	}
	return b.Backend.Poll(timeout)
}

type earlyPollWaker struct {
	earlyPoll
	evlib.Waker
}

type earlyPollIO struct {
	earlyPoll
	evlib.IO
}

type earlyPollWakerIO struct {
	earlyPoll
	evlib.Waker
	evlib.IO
}

func wrapEarlyPoll(be evlib.Backend) evlib.Backend {
	w, isWaker := be.(evlib.Waker)
	io, isIO := be.(evlib.IO)
	switch {
	case isWaker && isIO:
		return earlyPollWakerIO{earlyPoll{be}, w, io}
	case isWaker:
		return earlyPollWaker{earlyPoll{be}, w}
	case isIO:
		return earlyPollIO{earlyPoll{be}, io}
	}
	return earlyPoll{be}
}

// earlyPollSuite returns the suite for the backend under test wrapped by
// earlyPoll, registered (once per process) under a name of its own with
// the lowest priority, so that it is never a default.
func (s *suite) earlyPollSuite(t *testing.T) *suite {
	t.Helper()
	if s.host != nil {
		t.Skipf("conformance: foreign mode: the application's loop waits, not the backend (ShortWaits covers waits that end early)")
	}
	name := "conformance-early-poll-" + s.name
	d, err := evlib.Lookup(name)
	if errors.Is(err, evlib.ErrUnknown) {
		inner := s.desc.New
		d = s.desc
		d.Name, d.Flag, d.Priority = name, 0, math.MinInt
		d.New = func(c evlib.Config) (evlib.Backend, error) {
			be, err := inner(c)
			if err != nil {
				return nil, err
			}
			return wrapEarlyPoll(be), nil
		}
		err = evlib.Register(d)
	}
	require.NoError(t, err, "registering the early-polling wrapper of %q", s.name)
	return &suite{name: name, desc: d}
}

// Checklist 14 and 16: many timers with distinct deadlines, scheduled in
// scrambled order with Resets and Stops among them, fire in deadline order
// and never before their delay; stopped ones never fire, stopped and reset
// ones do. Timers with equal delays scheduled one after the other fire in
// the order they were scheduled: a later one's deadline is no earlier, and
// core.Timer documents that timers due at the same moment fire in the
// order they were scheduled. Spread: the loop wakes for the timers as they
// fall due. AllDue: the posted function that schedules them outlasts every
// deadline, so all are due at once and the order is the timer list's
// alone.
func (s *suite) testTimerOrder(t *testing.T) {
	for _, allDue := range []bool{false, true} {
		name := "Spread"
		if allDue {
			name = "AllDue"
		}
		t.Run(name, func(t *testing.T) { s.timerOrder(t, allDue) })
	}
}

func (s *suite) timerOrder(t *testing.T, allDue bool) {
	const (
		n    = 97 // distinct delays; prime, so that k*37 % n scrambles them
		base = 300 * time.Microsecond
		step = 23 * time.Microsecond
	)
	h := s.newHarness(t, echoInfo())
	h.start()
	// Touched only on the loop goroutine.
	var fires []timerFire
	var errs []error
	sched := map[string]*timerSched{}
	stopped := map[string]bool{}
	timers := map[string]*core.Timer{}
	want := 0
	done := make(chan struct{})
	h.do(func() {
		fire := func(name string) {
			ts := sched[name]
			if ts == nil {
				errs = append(errs, fmt.Errorf("%s fired, stopped or never scheduled", name))
				return
			}
			fires = append(fires, timerFire{name, time.Since(ts.before)})
			if len(fires) == want {
				close(done)
			}
		}
		add := func(name string, d time.Duration) {
			ts := &timerSched{name: name, before: time.Now(), delay: d}
			sched[name] = ts
			tm, err := h.th.AfterFunc(d, func() { fire(name) })
			ts.after = time.Now()
			if err != nil {
				errs = append(errs, err)
			}
			timers[name] = tm
		}
		reset := func(name string, d time.Duration) {
			ts := &timerSched{name: name, before: time.Now(), delay: d}
			sched[name] = ts
			err := timers[name].Reset(d)
			ts.after = time.Now()
			if err != nil {
				errs = append(errs, err)
			}
			delete(stopped, name)
		}
		stop := func(name string) {
			if was, err := timers[name].Stop(); !was || err != nil {
				errs = append(errs, fmt.Errorf("stopping pending timer %s: Stop reported %v, %v", name, was, err))
			}
			delete(sched, name)
			stopped[name] = true
		}
		tname := func(k int) string { return fmt.Sprintf("t%02d", k) }
		for i := range n {
			k := i * 37 % n
			add(tname(k), base+time.Duration(k)*step)
			if i%9 == 4 {
				// Equal delays, one after the other, among the rest.
				for j := range 4 {
					add(fmt.Sprintf("tie%02d.%d", k, j), base+time.Duration(k)*step+step/2)
				}
			}
		}
		for k := 0; k < n; k += 5 { // earlier or later than before
			reset(tname(k), base+time.Duration((k*53)%n)*step+step/3)
		}
		for k := 3; k < n; k += 7 {
			stop(tname(k))
		}
		for k := 3; k < n; k += 21 { // stopped, then scheduled again
			reset(tname(k), base+time.Duration(n-k)*step+2*step/3)
		}
		for k := 1; k < n; k += 11 { // rescheduled, then stopped
			reset(tname(k), base+time.Duration(k/2)*step)
			stop(tname(k))
		}
		want = len(sched)
		if allDue {
			var last time.Time
			for _, ts := range sched {
				if dl := ts.after.Add(ts.delay); dl.After(last) {
					last = dl
				}
			}
			// Not a synchronization: the scenario (every timer due by
			// the time the loop looks at its timers again).
			time.Sleep(time.Until(last))
		}
	})
	waitCh(t, done, "every timer")
	h.sync()
	var got []timerFire
	var all map[string]*timerSched
	var e []error
	var never map[string]bool
	h.do(func() { got, all, e, never = fires, sched, errs, stopped })
	require.Empty(t, e)
	pos := map[string]int{}
	var names []string
	for i, f := range got {
		_, twice := pos[f.name]
		require.False(t, twice, "timer %s fired twice", f.name)
		require.False(t, never[f.name], "stopped timer %s fired", f.name)
		names = append(names, f.name)
		pos[f.name] = i
		require.GreaterOrEqual(t, f.elapsed, all[f.name].delay, "timer %s fired %v after it was scheduled, before its delay", f.name, f.elapsed)
	}
	require.Len(t, got, len(all), "timers fired")
	keys := slices.Sorted(maps.Keys(all))
	for _, a := range keys {
		for _, b := range keys {
			if a != b && mustPrecede(*all[a], *all[b]) {
				require.Less(t, pos[a], pos[b], "%s must fire before %s (delays %v and %v; order %v)", a, b, all[a].delay, all[b].delay, names)
			}
		}
	}
	h.rec.verify(t)
}
