//go:build unix

package conformance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/goid"
	"github.com/stretchr/testify/require"
)

// waitBlocked returns once the loop, idle, is blocked in the backend's
// Poll: the core marks the thread as waiting before it calls Poll, and the
// backend counts the wait inside Poll, so a wait counted after a posted
// function ran means the loop is in (or past the start of) its next Poll,
// where nothing wakes it until the test does.
func (h *harness) waitBlocked() {
	h.t.Helper()
	var w0 uint64
	h.do(func() {
		w0 = h.waits()
		if h.host != nil && h.host.rl != nil {
			// A RunLoop's wait is counted by a task queued behind the
			// one running this function.
			h.host.rl.waitAhead()
		}
	})
	waitUntil(h.t, "the loop to block in the backend", func() bool { return h.waits() > w0 })
}

// A wait is counted (evlib.Counters.Waits) after every pass that handled
// events, before the loop blocks again: the suite tells an idle loop by a
// wait counted after a function posted to the thread ran, and such a
// function may run in the pass that events brought. Each round reads on a
// new connection, an fd the backend never reported before, in a batch of
// its own.
func (s *suite) testWaitCountedAfterEvents(t *testing.T) {
	rx := make(chan uint64, 16) // room for a bug's extra reports: never block the loop
	var h *harness
	cb := func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRX {
			rx <- h.waits()
		}
		return nil
	}
	h = s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "wc", Callback: cb}}})
	h.start()
	for i := range 4 {
		fd, peer := unixPair(t)
		var err error
		h.do(func() { _, err = h.ctx.AdoptFD(fd, "") })
		require.NoError(t, err)
		h.waitBlocked()
		write(t, peer, []byte("x"))
		w := waitCh(t, rx, "RAW_RX")
		waitUntil(t, fmt.Sprintf("a wait counted (evlib.Counters.Waits) after the pass that ran RAW_RX on connection %d, before the loop blocked again", i+1),
			func() bool { return h.waits() > w })
	}
	h.rec.verify(t)
}

// Checklist 11: an idle loop sleeps. One Service pass with a timeout on an
// idle context waits a bounded number of times; a running loop with no
// timer, and one holding paused input (in the kernel, or kept by the
// core), does not spin while it waits for a wakeup or a timer.
func (s *suite) testIdleSleeps(t *testing.T) {
	t.Run("Service", func(t *testing.T) {
		h := s.newHarness(t, echoInfo())
		_, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
		require.NoError(t, err)
		fd, _ := unixPair(t)
		_, err = h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		for range 2 {
			goWithin(t, "Service(0)", func() { err = h.service(0) })
			require.NoError(t, err)
		}
		before, w0 := h.th.Stats(), h.waits()
		goWithin(t, "Service(200ms) on an idle context", func() { err = h.service(200 * time.Millisecond) })
		require.NoError(t, err)
		after := h.th.Stats()
		require.LessOrEqual(t, h.waits()-w0, uint64(3), "waits in one idle Service pass")
		require.Equal(t, before.Dispatches, after.Dispatches, "callbacks on an idle context")
	})
	t.Run("NoTimer", func(t *testing.T) {
		// With nothing pending and no timer the core waits with no
		// limit (Poll(-1), or next < 0 from Pass): a backend whose wait
		// without a limit returns at once, with nothing, turns every
		// idle loop into a spinning one, which no test with a timer
		// sees. The loop is idle until another goroutine posts to it.
		h := s.newHarness(t, echoInfo())
		fd, _ := unixPair(t)
		_, err := h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		h.start()
		h.waitBlocked()
		var w0 uint64
		h.do(func() { w0 = h.waits() })
		woke := make(chan uint64, 1)
		posted := make(chan error, 1)
		time.AfterFunc(100*time.Millisecond, func() {
			posted <- h.th.Post(func() { woke <- h.waits() })
		})
		require.NoError(t, waitCh(t, posted, "Post from a timer goroutine"))
		w1 := waitCh(t, woke, "the posted function to run")
		require.LessOrEqual(t, w1-w0, uint64(10), "the loop waited %d times while idle with no timer for 100ms: it spins", w1-w0)
	})
	t.Run("SubResolutionTimer", func(t *testing.T) {
		// Checklist 17: a timer due in less than the backend's wait
		// resolution (a millisecond for poll and epoll) must not turn
		// into a string of zero-length waits.
		h := s.newHarness(t, echoInfo())
		h.start()
		h.waitBlocked()
		var w0, w1 uint64
		var err error
		fired := make(chan struct{})
		h.do(func() {
			w0 = h.waits()
			_, err = h.th.AfterFunc(300*time.Microsecond, func() {
				w1 = h.waits()
				close(fired)
			})
		})
		require.NoError(t, err)
		waitCh(t, fired, "a 300µs timer")
		require.LessOrEqual(t, w1-w0, uint64(10), "waits until a 300µs timer fired: the loop spins (as it does on a Poll that rounds a timeout finer than its resolution down to 0 instead of up, see evlib.Backend.Poll)")
	})
	t.Run("PausedInput", func(t *testing.T) {
		paused := make(chan struct{})
		// rx is touched only on the loop goroutine.
		rx := 0
		kernelCB := func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				return ev.Conn.RxFlowControl(false)
			case core.ReasonRawRX:
				rx++
			}
			return nil
		}
		keptCB := func(ev core.Event) error {
			if ev.Reason == core.ReasonRawRX {
				rx++
				if rx == 1 {
					close(paused)
					return ev.Conn.RxFlowControl(false)
				}
			}
			return nil
		}
		h := s.newHarness(t, core.Info{Protocols: []core.Protocol{
			{Name: "kernel", Callback: kernelCB},
			{Name: "kept", Callback: keptCB, RxChunk: 16},
		}})
		fd1, peer1 := unixPair(t)
		fd2, peer2 := unixPair(t)
		write(t, peer1, pattern(41, 1000))
		write(t, peer2, pattern(42, 1000))
		inKernel, err := h.ctx.AdoptFD(fd1, "kernel")
		require.NoError(t, err)
		_, err = h.ctx.AdoptFD(fd2, "kept")
		require.NoError(t, err)
		h.start()
		waitCh(t, paused, "the first RAW_RX of the second connection")
		h.rec.waitEvent(t, "read interest dropped for the paused connection", func(e event) bool {
			return e.reason == core.ReasonChangeModePollFD && e.fd == inKernel.FD() && e.poll.Events&evlib.Readable == 0
		})
		h.sync()
		var w0, w1 uint64
		var rx0, rx1 int
		fired := make(chan struct{})
		h.do(func() {
			w0, rx0 = h.waits(), rx
			_, err = h.th.AfterFunc(200*time.Millisecond, func() {
				w1, rx1 = h.waits(), rx
				close(fired)
			})
		})
		require.NoError(t, err)
		waitCh(t, fired, "a 200ms timer")
		var w, r0, r1 uint64 = w1 - w0, uint64(rx0), uint64(rx1)
		require.LessOrEqual(t, w, uint64(10), "the loop waited %d times while idle with paused input: it spins", w)
		require.Equal(t, r0, r1, "RAW_RX while paused")
	})
}

// Checklist 13: ServiceAdjustTimeout is 0 when forced service is pending
// (a WRITEABLE granted without the kernel, resumed input the core kept) or
// a timer is due, else at most max and at most the time to the next timer;
// Service(0) never blocks.
func (s *suite) testAdjustTimeout(t *testing.T) {
	// Callbacks run on the test goroutine here: nobody runs the loop, so
	// each Service call and loop-only call owns the thread.
	pausedOnce := false
	cb := func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRX && !pausedOnce {
			pausedOnce = true
			return ev.Conn.RxFlowControl(false)
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "adj", Callback: cb, RxChunk: 4}}})
	th := h.th
	service0 := func() {
		t.Helper()
		var err error
		goWithin(t, "Service(0)", func() { err = h.service(0) })
		require.NoError(t, err)
	}
	service0()
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second), "nothing pending")

	tm, err := th.AfterFunc(5*time.Second, func() {})
	require.NoError(t, err)
	d := th.ServiceAdjustTimeout(time.Hour)
	require.Greater(t, d, time.Duration(0), "next timer 5s away")
	require.LessOrEqual(t, d, 5*time.Second, "must not exceed the time to the next timer")
	require.Equal(t, time.Millisecond, th.ServiceAdjustTimeout(time.Millisecond), "max below the next timer")

	fired := false
	_, err = th.AfterFunc(0, func() { fired = true })
	require.NoError(t, err)
	require.Zero(t, th.ServiceAdjustTimeout(time.Second), "a timer is due")
	service0()
	require.True(t, fired, "Service(0) must run due timers")
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second))

	fd, peer := unixPair(t)
	c, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second), "a new connection needs no service")
	require.NoError(t, c.CallbackOnWritable())
	require.Zero(t, th.ServiceAdjustTimeout(time.Second), "a WRITEABLE is pending")
	service0()
	require.Equal(t, 1, h.rec.count(is(core.ReasonRawWriteable, c)), "Service(0) must deliver the pending WRITEABLE")
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second))

	// Input kept by the core for a paused connection counts once resumed.
	write(t, peer, []byte("0123456789"))
	waitUntil(t, "the first RAW_RX", func() bool {
		service0()
		return pausedOnce
	})
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second), "kept input of a paused connection needs no service")
	require.NoError(t, c.RxFlowControl(true))
	require.Zero(t, th.ServiceAdjustTimeout(time.Second), "resumed input kept by the core is pending")
	service0()
	require.Equal(t, 3, h.rec.count(is(core.ReasonRawRX, c)), "10 bytes in RxChunk 4 pieces")
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second))

	for range 3 {
		service0()
	}
	require.True(t, stopTimer(t, tm))

	if h.host != nil {
		h.rec.verify(t)
		return // between its waits the application's loop holds nothing
	}
	// While another goroutine runs the loop, this one may not service it.
	h.start()
	h.waitBlocked()
	require.Zero(t, th.ServiceAdjustTimeout(time.Second), "from a goroutine that does not own the thread")
	require.ErrorIs(t, th.Service(0), core.ErrInService)
	require.ErrorIs(t, h.ctx.Run(context.Background()), core.ErrInService)
	h.rec.verify(t)
}

// timerFire is one timer's firing as recorded by a test.
type timerFire struct {
	name    string
	elapsed time.Duration // since just before it was (re)scheduled
}

// timerSched is when a test (re)scheduled a timer: the core's deadline
// lies between before+delay and after+delay.
type timerSched struct {
	name          string
	before, after time.Time
	delay         time.Duration
}

// mustPrecede reports whether a's deadline is certainly before b's, or
// equal and scheduled first (ties fire in scheduling order).
func mustPrecede(a, b timerSched) bool {
	if !a.after.After(b.before) && a.delay <= b.delay {
		return true // scheduled first, no later deadline
	}
	return a.after.Add(a.delay).Before(b.before.Add(b.delay))
}

// Checklist 14 and 16: timers fire in deadline order, equal deadlines in
// scheduling order, never before their delay; stopped timers never fire;
// Reset reschedules.
func (s *suite) testTimers(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	h.start()
	// Touched only on the loop goroutine.
	var fires []timerFire
	var errs []error
	sched := map[string]*timerSched{}
	var stopWas, stopAgain bool
	done := make(chan struct{})
	h.do(func() {
		add := func(name string, d time.Duration, f func()) *core.Timer {
			ts := &timerSched{name: name, before: time.Now(), delay: d}
			sched[name] = ts
			tm, err := h.th.AfterFunc(d, func() {
				fires = append(fires, timerFire{name, time.Since(ts.before)})
				if f != nil {
					f()
				}
			})
			ts.after = time.Now()
			if err != nil {
				errs = append(errs, err)
			}
			return tm
		}
		add("d40", 40*time.Millisecond, nil)
		add("d10a", 10*time.Millisecond, nil)
		add("d25", 25*time.Millisecond, nil)
		add("d10b", 10*time.Millisecond, nil)
		add("d0", 0, nil)
		stopped := add("stopped", 5*time.Millisecond, nil)
		var err1, err2 error
		stopWas, err1 = stopped.Stop()
		stopAgain, err2 = stopped.Stop()
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, err)
		}
		reset := add("reset", time.Hour, nil)
		ts := sched["reset"]
		ts.before, ts.delay = time.Now(), 30*time.Millisecond
		if err := reset.Reset(30 * time.Millisecond); err != nil {
			errs = append(errs, err)
		}
		ts.after = time.Now()
		add("last", 60*time.Millisecond, func() { close(done) })
		if _, err := h.th.AfterFunc(time.Millisecond, nil); !errors.Is(err, core.ErrInvalid) {
			errs = append(errs, errors.New("AfterFunc with a nil func must return ErrInvalid"))
		}
	})
	waitCh(t, done, "the last timer")
	h.sync()
	var got []timerFire
	var all map[string]*timerSched
	h.do(func() { got, all = fires, sched })
	require.Empty(t, errs)
	require.True(t, stopWas, "Stop of a pending timer reports true")
	require.False(t, stopAgain, "Stop of a stopped timer reports false")
	pos := map[string]int{}
	var names []string
	for i, f := range got {
		names = append(names, f.name)
		pos[f.name] = i
		require.GreaterOrEqual(t, f.elapsed, all[f.name].delay, "timer %s fired before its delay", f.name)
	}
	t.Logf("firing order %v", names)
	require.ElementsMatch(t, []string{"d0", "d10a", "d10b", "d25", "reset", "d40", "last"}, names,
		"every timer fires once; the stopped one never")
	for _, a := range all {
		for _, b := range all {
			if a != b && a.name != "stopped" && b.name != "stopped" && mustPrecede(*a, *b) {
				require.Less(t, pos[a.name], pos[b.name], "%s must fire before %s (order %v)", a.name, b.name, names)
			}
		}
	}
	h.rec.verify(t)
}

// Checklist 15: a timer scheduled from inside a callback (timer, RAW_RX,
// EVENT_WAIT_CANCELLED, a posted function) earlier than every other one is
// honoured: the loop, otherwise asleep until a timer an hour away, wakes
// for it.
func (s *suite) testTimerEarlier(t *testing.T) {
	// armed is touched only on the loop goroutine.
	var armed chan struct{}
	var errs []error
	arm := func(th *core.Thread) {
		if armed == nil {
			return
		}
		ch := armed
		armed = nil
		if _, err := th.AfterFunc(20*time.Millisecond, func() { close(ch) }); err != nil {
			errs = append(errs, err)
		}
	}
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawRX, core.ReasonEventWaitCancelled:
			arm(ev.Thread)
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "t", Callback: cb}}})
	fd, peer := unixPair(t)
	_, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	farFired := false
	far, err := h.th.AfterFunc(time.Hour, func() { farFired = true })
	require.NoError(t, err)
	h.start()

	setArmed := func(t *testing.T) chan struct{} {
		h := h.with(t)
		ch := make(chan struct{})
		h.do(func() { armed = ch })
		h.waitBlocked()
		return ch
	}
	t.Run("FromTimer", func(t *testing.T) {
		h := h.with(t)
		ch := make(chan struct{})
		h.do(func() {
			_, err = h.th.AfterFunc(time.Millisecond, func() {
				armed = ch
				arm(h.th)
			})
		})
		require.NoError(t, err)
		waitCh(t, ch, "a timer scheduled inside a timer callback")
	})
	t.Run("FromRX", func(t *testing.T) {
		ch := setArmed(t)
		write(t, peer, []byte("x"))
		waitCh(t, ch, "a timer scheduled inside RAW_RX")
	})
	t.Run("FromCancel", func(t *testing.T) {
		h := h.with(t)
		ch := setArmed(t)
		require.NoError(t, h.ctx.CancelService())
		waitCh(t, ch, "a timer scheduled inside EVENT_WAIT_CANCELLED")
	})
	t.Run("FromPost", func(t *testing.T) {
		h := h.with(t)
		ch := make(chan struct{})
		h.waitBlocked()
		require.NoError(t, h.th.Post(func() {
			armed = ch
			arm(h.th)
		}))
		waitCh(t, ch, "a timer scheduled inside a posted function")
	})
	var stopped, fired bool
	var e []error
	var stopErr error
	h.do(func() { stopped, stopErr = far.Stop(); fired, e = farFired, errs })
	require.NoError(t, stopErr)
	require.Empty(t, e)
	require.True(t, stopped)
	require.False(t, fired)
	h.rec.verify(t)
}

// Checklist 14 and 16: a timer counts from when it is scheduled, not from
// when the loop last read the clock. Every way of scheduling one (AfterFunc,
// Timer.Reset, Conn.SetTimer, Conn.SetTimeout), from a posted function or
// from RAW_RX, after the loop idled in its wait for a while, fires no
// earlier than its delay after the call. A core that computed the deadline
// from the time of the batch (read before the wait) fires it at once.
func (s *suite) testTimersAfterIdle(t *testing.T) {
	const (
		idle  = 60 * time.Millisecond // how long the loop idles in its wait first
		delay = 30 * time.Millisecond
	)
	// Touched only on the loop goroutine.
	var schedAt time.Time
	var onRX func(c *core.Conn)
	fired := make(chan time.Duration, 16) // room for a bug's extra fires: never block the loop
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonTimer:
			fired <- time.Since(schedAt)
		case core.ReasonRawClose:
			if errors.Is(ev.Err, core.ErrTimeout) {
				fired <- time.Since(schedAt)
			}
		case core.ReasonRawRX:
			if f := onRX; f != nil {
				onRX = nil
				f(ev.Conn)
			}
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "ti", Callback: cb}}})
	h.start()
	adopt := func(t *testing.T) (*core.Conn, net.Conn) {
		h := h.with(t)
		fd, peer := unixPair(t)
		var c *core.Conn
		var err error
		h.do(func() { c, err = h.ctx.AdoptFD(fd, "") })
		require.NoError(t, err)
		return c, peer
	}
	var reused *core.Timer
	var err error
	h.do(func() { reused, err = h.th.AfterFunc(time.Hour, func() { fired <- time.Since(schedAt) }) })
	require.NoError(t, err)
	ways := []struct {
		name     string
		schedule func(c *core.Conn) error
	}{
		{"AfterFunc", func(*core.Conn) error {
			_, err := h.th.AfterFunc(delay, func() { fired <- time.Since(schedAt) })
			return err
		}},
		{"Reset", func(*core.Conn) error { return reused.Reset(delay) }},
		{"SetTimer", func(c *core.Conn) error { return c.SetTimer(delay) }},
		{"SetTimeout", func(c *core.Conn) error { return c.SetTimeout(delay) }},
	}
	for _, from := range []string{"Post", "RX"} {
		for _, w := range ways {
			t.Run(from+"/"+w.name, func(t *testing.T) {
				h := h.with(t)
				c, peer := adopt(t)
				var err error
				schedule := func(c *core.Conn) {
					schedAt = time.Now()
					err = w.schedule(c)
				}
				h.waitBlocked()
				time.Sleep(idle) // the loop idles in its wait: the scenario, not a synchronization
				if from == "Post" {
					h.do(func() { schedule(c) })
				} else {
					h.do(func() { onRX = schedule })
					h.waitBlocked()
					time.Sleep(idle)
					write(t, peer, []byte("x"))
				}
				el := waitCh(t, fired, "the timer scheduled after an idle wait")
				h.sync()
				var e error
				h.do(func() { e = err })
				require.NoError(t, e)
				require.GreaterOrEqual(t, el, delay, "%s from %s fired %v after it was scheduled, before its delay", w.name, from, el)
			})
		}
	}
	h.rec.verify(t)
}

// Checklist 14, 16 and 18: Conn.SetTimer delivers one TIMER (a second
// SetTimer replaces the first), CancelTimer cancels it; SetTimeout closes
// with ErrTimeout, SetTimeout(0) cancels.
func (s *suite) testConnTimers(t *testing.T) {
	// st is touched only on the loop goroutine.
	var setAt time.Time
	var elapsed []time.Duration
	cb := func(ev core.Event) error {
		if ev.Reason == core.ReasonTimer {
			elapsed = append(elapsed, time.Since(setAt))
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "ct", Callback: cb}}})
	h.start()
	adopt := func() *core.Conn {
		fd, _ := unixPair(t)
		var c *core.Conn
		var err error
		h.do(func() { c, err = h.ctx.AdoptFD(fd, "") })
		require.NoError(t, err)
		return c
	}
	// after waits for a timer scheduled d from now; every timer of the
	// connection due earlier has fired by then (deadline order).
	after := func(d time.Duration) {
		t.Helper()
		ch := make(chan struct{})
		var err error
		h.do(func() { _, err = h.th.AfterFunc(d, func() { close(ch) }) })
		require.NoError(t, err)
		waitCh(t, ch, "a sentinel timer")
	}
	a := adopt()
	var e1, e2 error
	h.do(func() {
		setAt = time.Now()
		e1 = a.SetTimer(30 * time.Millisecond)
		e2 = a.SetTimer(10 * time.Millisecond)
	})
	require.NoError(t, e1)
	require.NoError(t, e2)
	h.rec.waitEvent(t, "TIMER", is(core.ReasonTimer, a))
	after(60 * time.Millisecond)
	require.Equal(t, 1, h.rec.count(is(core.ReasonTimer, a)), "SetTimer twice: the second replaces the first")
	var el []time.Duration
	h.do(func() { el = elapsed })
	require.GreaterOrEqual(t, el[0], 10*time.Millisecond, "TIMER before its delay")

	h.do(func() {
		e1 = a.SetTimer(10 * time.Millisecond)
		e2 = a.CancelTimer()
	})
	require.NoError(t, e1)
	require.NoError(t, e2)
	after(40 * time.Millisecond)
	require.Equal(t, 1, h.rec.count(is(core.ReasonTimer, a)), "a cancelled TIMER fired")

	b := adopt()
	h.do(func() { e1 = b.SetTimeout(20 * time.Millisecond) })
	require.NoError(t, e1)
	e := h.rec.waitEvent(t, "RAW_CLOSE after SetTimeout", is(core.ReasonRawClose, b))
	require.ErrorIs(t, e.err, core.ErrTimeout)
	h.do(func() { e1 = b.SetTimer(time.Millisecond) })
	require.ErrorIs(t, e1, core.ErrClosed, "SetTimer on a closed connection")

	c := adopt()
	var closed bool
	h.do(func() {
		e1 = c.SetTimeout(20 * time.Millisecond)
		e2 = c.SetTimeout(0)
	})
	require.NoError(t, e1)
	require.NoError(t, e2)
	after(60 * time.Millisecond)
	h.do(func() { closed, e1 = c.Closed(), c.SetTimeout(-time.Second) })
	require.False(t, closed, "SetTimeout(0) must cancel the timeout")
	require.ErrorIs(t, e1, core.ErrInvalid, "SetTimeout with a negative duration")
	require.Zero(t, h.rec.count(is(core.ReasonRawClose, c)))
	h.rec.verify(t)

	t.Run("IdleTimeout", func(t *testing.T) {
		h := s.newHarness(t, core.Info{IdleTimeout: 20 * time.Millisecond, Protocols: []core.Protocol{{Name: "idle", Callback: echoCallback}}})
		fd, peer := unixPair(t)
		c, err := h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		h.start()
		e := h.rec.waitEvent(t, "RAW_CLOSE after Info.IdleTimeout", is(core.ReasonRawClose, c))
		require.ErrorIs(t, e.err, core.ErrTimeout)
		expectEOF(t, peer)
	})
	// Input that arrives late in a long wait counts from when it came, not
	// from when the wait began: the connection lives a whole IdleTimeout
	// after it.
	t.Run("IdleTimeoutCountsActivity", func(t *testing.T) {
		const d = 300 * time.Millisecond
		var rxAt, closeAt time.Time // loop goroutine
		cb := func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawRX:
				rxAt = time.Now()
			case core.ReasonRawClose:
				closeAt = time.Now()
			}
			return nil
		}
		h := s.newHarness(t, core.Info{IdleTimeout: d, Protocols: []core.Protocol{{Name: "idle", Callback: cb}}})
		h.start()
		for attempt := 1; ; attempt++ {
			fd, peer := unixPair(t)
			var c *core.Conn
			var err error
			h.do(func() { c, err = h.ctx.AdoptFD(fd, "") })
			require.NoError(t, err)
			h.waitBlocked()
			time.Sleep(d * 2 / 3)
			_, werr := peer.Write([]byte("x")) // fails if the timeout came first
			e := h.rec.waitEvent(t, "RAW_CLOSE after Info.IdleTimeout", is(core.ReasonRawClose, c))
			require.ErrorIs(t, e.err, core.ErrTimeout)
			var rx, closed time.Time
			h.do(func() { rx, closed, rxAt = rxAt, closeAt, time.Time{} })
			if werr != nil || rx.IsZero() {
				// The timeout came before the byte: this machine is too
				// busy for the sleep above to mean anything. Again.
				require.Less(t, attempt, 5, "the connection closed before its input arrived, %d times", attempt)
				continue
			}
			require.GreaterOrEqual(t, closed.Sub(rx), d/2, "closed %v after its last input; IdleTimeout is %v", closed.Sub(rx), d)
			return
		}
	})
	// Writing is activity too: a connection that only sends (a feed whose
	// peer never speaks) lives a whole IdleTimeout after its last write,
	// however long it has been open.
	t.Run("IdleTimeoutCountsWrites", func(t *testing.T) {
		const (
			d      = 300 * time.Millisecond
			every  = d / 5
			writes = 8 // 8 * every > d: the stream outlives one IdleTimeout
		)
		var n int
		var lastWrite, closeAt time.Time // loop goroutine
		var closeErr error
		var errs []error
		cb := func(ev core.Event) error {
			var err error
			switch ev.Reason {
			case core.ReasonRawAdopt:
				err = ev.Conn.SetTimer(every)
			case core.ReasonTimer:
				err = ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				if _, err = ev.Conn.Write([]byte("x")); err == nil {
					n++
					lastWrite = time.Now()
					if n < writes {
						err = ev.Conn.SetTimer(every)
					}
				}
			case core.ReasonRawClose:
				closeAt, closeErr = time.Now(), ev.Err
				return nil
			}
			if err != nil {
				errs = append(errs, err)
			}
			return nil
		}
		h := s.newHarness(t, core.Info{IdleTimeout: d, Protocols: []core.Protocol{{Name: "feed", Callback: cb}}})
		fd, peer := unixPair(t)
		c, err := h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		h.start()
		h.rec.waitEvent(t, "RAW_CLOSE after Info.IdleTimeout", is(core.ReasonRawClose, c))
		var wrote int
		var last, closed time.Time
		var cerr error
		var e []error
		h.do(func() { wrote, last, closed, cerr, e = n, lastWrite, closeAt, closeErr, errs })
		require.Empty(t, e)
		require.ErrorIs(t, cerr, core.ErrTimeout)
		require.Positive(t, wrote)
		// The batch's clock may be read a little before the write: d/2,
		// as above.
		require.GreaterOrEqual(t, closed.Sub(last), d/2,
			"closed %v after its last write (write %d of %d); IdleTimeout is %v", closed.Sub(last), wrote, writes, d)
		readFull(t, peer, wrote)
		expectEOF(t, peer)
	})
}

// Checklist 19: CancelService from many goroutines wakes the blocked loop
// and yields between 1 and N EVENT_WAIT_CANCELLED per protocol, on the
// loop goroutine; every call is followed by at least one.
func (s *suite) testCancelService(t *testing.T) {
	// hold, touched only on the loop goroutine, makes p1's next
	// EVENT_WAIT_CANCELLED wait inside the callback until released.
	var hold func()
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{
		{Name: "p1", Callback: func(ev core.Event) error {
			if f := hold; f != nil && ev.Reason == core.ReasonEventWaitCancelled {
				hold = nil
				f()
			}
			return nil
		}},
		{Name: "p2", Callback: func(core.Event) error { return nil }},
	}})
	h.start()
	cancelled := func(proto string) func(event) bool {
		return func(e event) bool { return e.reason == core.ReasonEventWaitCancelled && e.proto == proto }
	}
	for i := range 5 {
		h.waitBlocked()
		m := h.rec.mark()
		if i%2 == 0 {
			require.NoError(t, h.ctx.CancelService())
		} else {
			require.NoError(t, h.th.CancelService())
		}
		h.rec.waitEventFrom(t, "EVENT_WAIT_CANCELLED to p1", m, cancelled("p1"))
		h.rec.waitEventFrom(t, "EVENT_WAIT_CANCELLED to p2", m, cancelled("p2"))
	}

	const n = 64
	h.waitBlocked()
	m := h.rec.mark()
	gate := make(chan struct{})
	errs := make(chan error, n)
	for range n {
		go func() {
			<-gate
			errs <- h.ctx.CancelService()
		}()
	}
	close(gate)
	for range n {
		require.NoError(t, waitCh(t, errs, "CancelService to return"))
	}
	h.sync() // every delivery owed is made by now
	var c1, c2 int
	for _, e := range h.rec.snapshot()[m:] {
		if e.reason != core.ReasonEventWaitCancelled {
			continue
		}
		s.onLoopGoroutine(t, h, e.g, "EVENT_WAIT_CANCELLED")
		require.Nil(t, e.conn)
		switch e.proto {
		case "p1":
			c1++
		case "p2":
			c2++
		}
	}
	require.GreaterOrEqual(t, c1, 1, "%d concurrent CancelService calls, no delivery", n)
	require.LessOrEqual(t, c1, n, "more deliveries than calls")
	require.Equal(t, c1, c2, "every delivery goes to every protocol")
	t.Logf("%d concurrent CancelService calls: %d deliveries", n, c1)

	// A CancelService made while the deliveries of an earlier one run is
	// not folded into them: one more delivery follows it.
	entered, release := make(chan struct{}), make(chan struct{})
	h.do(func() {
		hold = func() {
			close(entered)
			<-release
		}
	})
	h.waitBlocked()
	require.NoError(t, h.ctx.CancelService())
	waitCh(t, entered, "EVENT_WAIT_CANCELLED to p1")
	require.NoError(t, h.ctx.CancelService()) // the loop is inside p1's callback
	m = h.rec.mark()
	close(release)
	h.rec.waitEventFrom(t, "EVENT_WAIT_CANCELLED to p1 for a CancelService made during the previous delivery", m, cancelled("p1"))
	h.rec.waitEventFrom(t, "EVENT_WAIT_CANCELLED to p2 for a CancelService made during the previous delivery", m, cancelled("p2"))
	h.rec.verify(t)
}

// Checklist 22: Thread.Post from many goroutines runs each function
// exactly once, on the loop goroutine, in the order each goroutine posted.
func (s *suite) testPost(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	h.start()
	const posters, each = 8, 50
	// Touched only on the loop goroutine.
	var runs [posters][each]int
	var last [posters]int
	var wrongG, outOfOrder int
	for i := range last {
		last[i] = -1
	}
	runG := h.runG.Load()
	var wg sync.WaitGroup
	errs := make(chan error, posters*each)
	for p := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				errs <- h.th.Post(func() {
					runs[p][i]++
					if goid.ID() != runG && s.oneGoroutine() {
						wrongG++
					}
					if last[p] != i-1 {
						outOfOrder++
					}
					last[p] = i
				})
			}
		}()
	}
	goWithin(t, "posting", wg.Wait)
	for range posters * each {
		require.NoError(t, <-errs)
	}
	h.sync()
	// Read on the loop goroutine, whose counters they are; checked here, on
	// the test's (FailNow must not run on the loop goroutine).
	var miscounted []string
	var wrong, unordered int
	h.do(func() {
		for p := range posters {
			for i := range each {
				if runs[p][i] != 1 {
					miscounted = append(miscounted, fmt.Sprintf("%d/%d ran %d times", p, i, runs[p][i]))
				}
			}
		}
		wrong, unordered = wrongG, outOfOrder
	})
	require.Empty(t, miscounted, "posted functions run once each")
	require.Zero(t, wrong, "posted functions run on the loop goroutine")
	require.Zero(t, unordered, "posted functions of one goroutine run in the order posted")
	require.ErrorIs(t, h.th.Post(nil), core.ErrInvalid)
	var errService, errRun error
	h.do(func() {
		errService = h.th.Service(0)
		errRun = h.ctx.Run(context.Background())
	})
	require.ErrorIs(t, errService, core.ErrInService, "Service inside a callback")
	require.ErrorIs(t, errRun, core.ErrInService, "Run inside a callback")
	h.rec.verify(t)
}

// Checklist 21: CancelService and Post racing Destroy (twice, from two
// goroutines) never crash and return nil or ErrDestroyed; a posted
// function runs at most once; after Done both return ErrDestroyed. Run
// under -race.
func (s *suite) testCancelVersusDestroy(t *testing.T) {
	for iter := range 6 {
		running := iter%2 == 0
		h := s.newHarness(t, echoInfo())
		if running {
			h.start()
		}
		const callers, calls = 6, 200
		var ran [callers][calls]atomic.Int32
		var accepted atomic.Int32
		gate := make(chan struct{})
		var wg sync.WaitGroup
		bad := make(chan error, callers*calls*2+2)
		for g := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				for i := range calls {
					err1 := h.ctx.CancelService()
					err2 := h.th.Post(func() { ran[g][i].Add(1) })
					for _, err := range []error{err1, err2} {
						if err != nil && !errors.Is(err, core.ErrDestroyed) {
							bad <- err
						}
					}
					if err2 == nil {
						accepted.Add(1)
					}
					if errors.Is(err1, core.ErrDestroyed) && errors.Is(err2, core.ErrDestroyed) {
						return
					}
				}
			}()
		}
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				if err := h.ctx.Destroy(); err != nil {
					bad <- err
				}
			}()
		}
		close(gate)
		goWithin(t, "CancelService, Post and Destroy racing", wg.Wait)
		waitCh(t, h.ctx.Done(), "Done")
		if running {
			// Destroy may win before Run has taken the thread: then Run
			// returns ErrDestroyed, as Context.Run documents.
			h.done = true
			if err := waitCh(t, h.runErr, "Run to return"); err != nil {
				require.ErrorIs(t, err, core.ErrDestroyed, "Run racing Destroy")
			}
		}
		close(bad)
		for err := range bad {
			t.Errorf("unexpected error racing Destroy: %v", err)
		}
		total := int32(0)
		for g := range callers {
			for i := range calls {
				n := ran[g][i].Load()
				require.LessOrEqual(t, n, int32(1), "a posted function ran %d times", n)
				total += n
			}
		}
		require.LessOrEqual(t, total, accepted.Load())
		require.ErrorIs(t, h.ctx.CancelService(), core.ErrDestroyed)
		require.ErrorIs(t, h.th.Post(func() {}), core.ErrDestroyed)
		require.NoError(t, h.ctx.Destroy())
	}
}

// CallbackOnWritableAll and RxFlowControlAll reach every connection of
// the named protocol and no other.
func (s *suite) testAllProtocol(t *testing.T) {
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{
		{Name: "p1", Callback: func(core.Event) error { return nil }},
		{Name: "p2", Callback: func(core.Event) error { return nil }},
	}})
	var conns [3]*core.Conn
	var peers [3]net.Conn
	for i, proto := range []string{"p1", "p1", "p2"} {
		fd, peer := unixPair(t)
		c, err := h.ctx.AdoptFD(fd, proto)
		require.NoError(t, err)
		conns[i], peers[i] = c, peer
	}
	h.start()
	var err error
	h.do(func() { err = h.ctx.CallbackOnWritableAll("p1") })
	require.NoError(t, err)
	h.rec.waitEvent(t, "RAW_WRITEABLE", is(core.ReasonRawWriteable, conns[0]))
	h.rec.waitEvent(t, "RAW_WRITEABLE", is(core.ReasonRawWriteable, conns[1]))
	h.sync()
	require.Zero(t, h.rec.count(is(core.ReasonRawWriteable, conns[2])), "RAW_WRITEABLE for another protocol's connection")

	var paused [3]bool
	h.do(func() {
		err = h.ctx.RxFlowControlAll("p1", false)
		for i, c := range conns {
			paused[i] = c.RxPaused()
		}
	})
	require.NoError(t, err)
	require.Equal(t, [3]bool{true, true, false}, paused)
	for _, p := range peers {
		write(t, p, []byte("x"))
	}
	h.rec.waitEvent(t, "RAW_RX of the p2 connection", is(core.ReasonRawRX, conns[2]))
	h.sync()
	require.Zero(t, h.rec.count(is(core.ReasonRawRX, conns[0]))+h.rec.count(is(core.ReasonRawRX, conns[1])), "RAW_RX while paused")
	h.do(func() { err = h.ctx.RxFlowControlAll("p1", true) })
	require.NoError(t, err)
	h.rec.waitEvent(t, "RAW_RX after resume", is(core.ReasonRawRX, conns[0]))
	h.rec.waitEvent(t, "RAW_RX after resume", is(core.ReasonRawRX, conns[1]))
	h.do(func() { err = h.ctx.CallbackOnWritableAll("nope") })
	require.ErrorIs(t, err, core.ErrUnknownProtocol)
	h.rec.verify(t)
}

// Checklist 21 and 31: Run racing Destroy (Run may not have taken the
// thread yet when Destroy tears it down) returns nil or ErrDestroyed,
// never an error claiming someone else services the thread.
func (s *suite) testRunVersusDestroy(t *testing.T) {
	for i := range 200 {
		h := s.newHarness(t, echoInfo())
		h.started = true
		go func() { h.runErr <- h.run(context.Background()) }()
		if i%2 == 1 {
			runtime.Gosched()
		}
		require.NoError(t, h.ctx.Destroy())
		waitCh(t, h.ctx.Done(), "Done")
		h.done = true
		if err := waitCh(t, h.runErr, "Run to return"); err != nil {
			require.ErrorIs(t, err, core.ErrDestroyed, "Run racing Destroy")
		}
		require.ErrorIs(t, h.th.Service(0), core.ErrDestroyed)
	}
}

// Checklist 23: while Run is blocked in the backend on another goroutine,
// loop-only methods called from the test goroutine return
// ErrWrongGoroutine and change nothing; where the core tells goroutines
// apart (exactGoroutine) this holds even while the loop runs a callback.
func (s *suite) testWrongGoroutine(t *testing.T) {
	probe := make(chan chan struct{}, 1)
	var probeConn *core.Conn
	cb := func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRX && ev.Conn == probeConn {
			// Hold the loop inside a callback while the test goroutine
			// calls in.
			done := make(chan struct{})
			probe <- done
			<-done
			return nil
		}
		return echoCallback(ev)
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "echo", Callback: cb}}})
	fd, peer := unixPair(t)
	c, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	tm, err := h.th.AfterFunc(time.Hour, func() {})
	require.NoError(t, err)
	h.start()

	t.Run("Blocked", func(t *testing.T) {
		h := h.with(t)
		if h.host != nil {
			t.Skip("conformance: foreign mode: while the application's loop waits nobody holds the thread, so other goroutines may make loop-only calls (see ForeignCallsWhileWaiting)")
		}
		h.waitBlocked()
		base := openFDs()
		wrong := func(what string, err error) {
			t.Helper()
			require.ErrorIs(t, err, core.ErrWrongGoroutine, "%s from another goroutine while Run is blocked", what)
		}
		wrong("Conn.CallbackOnWritable", c.CallbackOnWritable())
		_, err := c.Write([]byte("x"))
		wrong("Conn.Write", err)
		wrong("Conn.RxFlowControl", c.RxFlowControl(false))
		wrong("Conn.SetTimer", c.SetTimer(time.Second))
		wrong("Conn.CancelTimer", c.CancelTimer())
		wrong("Conn.SetTimeout", c.SetTimeout(time.Second))
		wrong("Conn.CloseWrite", c.CloseWrite())
		wrong("Conn.Abort", c.Abort())
		wrong("Conn.Close", c.Close())
		_, err = h.ctx.Listen("tcp4", "127.0.0.1:0", "")
		wrong("Context.Listen", err)
		_, err = h.th.AfterFunc(time.Second, func() {})
		wrong("Thread.AfterFunc", err)
		wrong("Timer.Reset", tm.Reset(time.Second))
		stopped, err := tm.Stop()
		wrong("Timer.Stop", err)
		require.False(t, stopped)
		// (Context.CallbackOnWritableAll and RxFlowControlAll may be
		// called from anywhere: they post to threads the caller is not on.)
		fd2, peer2 := unixPair(t)
		_, err = h.ctx.AdoptFD(fd2, "")
		wrong("Context.AdoptFD", err)
		require.True(t, fdOpen(fd2), "a refused AdoptFD must leave the fd to the caller")
		srv, cli := tcpPair(t)
		_, err = h.ctx.AdoptConn(srv, "")
		wrong("Context.AdoptConn", err)
		require.ErrorIs(t, h.th.Service(0), core.ErrInService)
		// What was refused left everything as it was.
		fdCloseOrFail(t, fd2)
		peer2.Close()
		write(t, srv, []byte("still mine"))
		require.Equal(t, "still mine", string(readFull(t, cli, 10)))
		srv.Close()
		cli.Close()
		checkFDs(t, base)
		require.NoError(t, roundTrips(peer, 51, 5), "the connection after the refused calls")
		require.Zero(t, h.rec.count(is(core.ReasonRawClose, nil)))
		h.do(func() { stopped, err = tm.Stop() })
		require.NoError(t, err)
		require.True(t, stopped, "the timer must still be pending")
	})
	t.Run("InsideCallback", func(t *testing.T) {
		h := h.with(t)
		if !exactGoroutine {
			t.Skipf("conformance: on %s the core checks the calling goroutine only in race-enabled builds (go test -race); others detect only calls made while the loop is in the backend", runtime.GOARCH)
		}
		fd3, peer3 := unixPair(t)
		var err error
		h.do(func() { probeConn, err = h.ctx.AdoptFD(fd3, "") })
		require.NoError(t, err)
		write(t, peer3, []byte("x"))
		done := waitCh(t, probe, "the loop to enter RAW_RX")
		err1 := c.CallbackOnWritable()
		_, err2 := h.th.AfterFunc(time.Second, func() {})
		_, err3 := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
		close(done)
		require.ErrorIs(t, err1, core.ErrWrongGoroutine, "Conn.CallbackOnWritable while the loop runs a callback")
		require.ErrorIs(t, err2, core.ErrWrongGoroutine, "Thread.AfterFunc while the loop runs a callback")
		require.ErrorIs(t, err3, core.ErrWrongGoroutine, "Context.Listen while the loop runs a callback")
	})
	h.rec.verify(t)
}

func fdCloseOrFail(t testing.TB, fd int) {
	t.Helper()
	require.True(t, fdOpen(fd))
	require.NoError(t, closeFD(fd))
}

// Run returns ctx.Err() when its context is cancelled, and the core
// context stays usable: Run again serves as before.
func (s *suite) testRunContextCancel(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	cctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() { errs <- h.run(cctx) }()
	c, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, roundTrips(c, 61, 3))
	cancel()
	require.ErrorIs(t, waitCh(t, errs, "Run to return after its context was cancelled"), context.Canceled)
	h.start()
	require.NoError(t, roundTrips(c, 62, 3))
	h.rec.verify(t)
}
