//go:build unix

package core_test

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The tests in this file run the core on the sim backend: real sockets, a
// fake clock that jumps to the end of a wait instead of sleeping. They
// check the core's timing exactly, in fake time, and take none.

// sim is a one-thread context on the sim backend, serviced on the test's
// goroutine, with the RAW_CLOSE of every connection recorded.
type sim struct {
	t      *testing.T
	clk    *simloop.Clock
	th     *core.Thread
	closed map[*core.Conn]closing
}

// closing is when, on the fake clock, and why a connection closed.
type closing struct {
	at  time.Duration
	err error
}

// newSim creates the context on clk. info's first protocol is the one
// connections use; without one, a protocol that does nothing.
func newSim(t *testing.T, clk *simloop.Clock, info core.Info) *sim {
	t.Helper()
	s := &sim{t: t, clk: clk, closed: map[*core.Conn]closing{}}
	if len(info.Protocols) == 0 {
		info.Protocols = []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}
	}
	p := &info.Protocols[0]
	cb := p.Callback
	p.Callback = func(ev core.Event) error {
		if ev.Reason == core.ReasonRawClose {
			s.closed[ev.Conn] = closing{clk.Now(), ev.Err}
		}
		return cb(ev)
	}
	info.EventLib, info.Foreign = simloop.Name, []any{clk}
	ctx, err := core.New(info)
	require.NoError(t, err)
	t.Cleanup(func() { ctx.Destroy() })
	s.th = ctx.Thread(0)
	return s
}

// runTo services the thread until its clock reads at, and everything due
// by then has run. Each pass waits at most until at; the sim backend jumps
// to the end of a wait that finds nothing ready, so every timer on the way
// fires at exactly its deadline, and at once.
func (s *sim) runTo(at time.Duration) {
	s.t.Helper()
	for range 1000 {
		require.NoError(s.t, s.th.Service(max(at-s.clk.Now(), 0)))
		if s.clk.Now() >= at {
			return
		}
	}
	s.t.Fatalf("the clock reads %v after 1000 passes, not %v: something is ready all the time", s.clk.Now(), at)
}

// adopt adopts one end of a new unix socket pair as a connection and
// returns the other end, non-blocking, which is closed with the test.
func (s *sim) adopt() (*core.Conn, int) {
	s.t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(s.t, err)
	s.t.Cleanup(func() { unix.Close(p[1]) })
	require.NoError(s.t, unix.SetNonblock(p[1], true))
	c, err := s.th.Context().AdoptFD(p[0], "")
	if err != nil {
		unix.Close(p[0])
	}
	require.NoError(s.t, err)
	return c, p[1]
}

// writer is a protocol that writes p, once per RAW_WRITEABLE.
func writer(p []byte) []core.Protocol {
	return []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawWriteable {
			_, err := ev.Conn.Write(p)
			return err
		}
		return nil
	}}}
}

// Timers fire at exactly their deadlines, not a nanosecond early, in
// deadline order; timers due at the same moment fire in the order they
// were scheduled.
func TestSimTimersFireAtTheirDeadlines(t *testing.T) {
	clk := simloop.NewClock()
	s := newSim(t, clk, core.Info{})
	var fired []string
	for _, tm := range []struct {
		name string
		d    time.Duration
	}{{"c", 3 * time.Second}, {"a", time.Second}, {"b", 2 * time.Second}, {"a2", time.Second}} {
		_, err := s.th.AfterFunc(tm.d, func() { fired = append(fired, fmt.Sprint(tm.name, "@", clk.Now())) })
		require.NoError(t, err)
	}

	s.runTo(time.Second - 1)
	require.Empty(t, fired)
	s.runTo(time.Hour)
	require.Equal(t, []string{"a@1s", "a2@1s", "b@2s", "c@3s"}, fired)
}

// Reset counts from the Reset, not from the first schedule; a stopped
// timer never fires.
func TestSimTimerResetAndStop(t *testing.T) {
	clk := simloop.NewClock()
	s := newSim(t, clk, core.Info{})
	var fired []string
	record := func(name string) func() {
		return func() { fired = append(fired, fmt.Sprint(name, "@", clk.Now())) }
	}
	reset, err := s.th.AfterFunc(time.Second, record("reset"))
	require.NoError(t, err)
	stopped, err := s.th.AfterFunc(time.Second, record("stopped"))
	require.NoError(t, err)

	s.runTo(600 * time.Millisecond)
	require.NoError(t, reset.Reset(time.Second))
	was, err := stopped.Stop()
	require.NoError(t, err)
	require.True(t, was)
	s.runTo(1600*time.Millisecond - 1)
	require.Empty(t, fired)
	s.runTo(time.Hour)
	require.Equal(t, []string{"reset@1.6s"}, fired)
}

// A timer set for the longest duration there is never fires: its deadline
// saturates at the end of time instead of wrapping round to the past,
// which it would as soon as the clock is past 0.
func TestSimTimerForeverNeverFires(t *testing.T) {
	const forever = time.Duration(math.MaxInt64)
	var fired []string
	clk := simloop.NewClock()
	s := newSim(t, clk, core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonTimer {
			fired = append(fired, "Conn.SetTimer")
		}
		return nil
	}}}})
	c, _ := s.adopt()
	s.runTo(time.Second)

	_, err := s.th.AfterFunc(forever, func() { fired = append(fired, "AfterFunc") })
	require.NoError(t, err)
	tm, err := s.th.AfterFunc(time.Second, func() { fired = append(fired, "Timer.Reset") })
	require.NoError(t, err)
	require.NoError(t, tm.Reset(forever))
	require.NoError(t, c.SetTimer(forever))
	require.NoError(t, c.SetTimeout(forever))

	const centuries = 200 * 365 * 24 * time.Hour
	s.runTo(centuries)
	require.Empty(t, fired)
	require.False(t, c.Closed(), "Conn.SetTimeout fired")
}

// Conn.SetTimer delivers TIMER at exactly the set time; set again before
// that, it counts from then.
func TestSimConnTimer(t *testing.T) {
	var timers []time.Duration
	clk := simloop.NewClock()
	s := newSim(t, clk, core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonTimer {
			timers = append(timers, clk.Now())
		}
		return nil
	}}}})
	c, _ := s.adopt()

	require.NoError(t, c.SetTimer(time.Second))
	s.runTo(250 * time.Millisecond)
	require.NoError(t, c.SetTimer(time.Second))
	s.runTo(time.Hour)
	require.Equal(t, []time.Duration{1250 * time.Millisecond}, timers)
}

// Conn.SetTimeout closes the connection with ErrTimeout at exactly the set
// time; set again before that, it counts from then; 0 cancels it.
func TestSimConnTimeout(t *testing.T) {
	s := newSim(t, simloop.NewClock(), core.Info{})
	renewed, _ := s.adopt()
	cancelled, _ := s.adopt()

	require.NoError(t, renewed.SetTimeout(5*time.Second))
	require.NoError(t, cancelled.SetTimeout(5*time.Second))
	s.runTo(2 * time.Second)
	require.NoError(t, renewed.SetTimeout(5*time.Second))
	require.NoError(t, cancelled.SetTimeout(0))
	s.runTo(7*time.Second - 1)
	require.Empty(t, s.closed)
	s.runTo(time.Hour)
	require.Equal(t, map[*core.Conn]closing{renewed: {7 * time.Second, core.ErrTimeout}}, s.closed)
}

// Info.IdleTimeout closes a connection at exactly that long after its last
// activity, which is input it read or output it wrote.
func TestSimIdleTimeout(t *testing.T) {
	s := newSim(t, simloop.NewClock(), core.Info{IdleTimeout: 10 * time.Second, Protocols: writer([]byte("out"))})
	idle, _ := s.adopt()
	reads, readsPeer := s.adopt()
	writes, writesPeer := s.adopt()

	s.runTo(4 * time.Second)
	_, err := unix.Write(readsPeer, []byte("in"))
	require.NoError(t, err)
	s.runTo(9 * time.Second)
	require.NoError(t, writes.CallbackOnWritable())
	s.runTo(10*time.Second - 1)
	require.Empty(t, s.closed)
	s.runTo(time.Hour)

	var buf [8]byte
	n, err := unix.Read(writesPeer, buf[:])
	require.NoError(t, err)
	require.Equal(t, "out", string(buf[:n]))
	require.Equal(t, map[*core.Conn]closing{
		idle:   {10 * time.Second, core.ErrTimeout},
		reads:  {14 * time.Second, core.ErrTimeout},
		writes: {19 * time.Second, core.ErrTimeout},
	}, s.closed)
}

// A Write the kernel takes only part of is activity too: the idle timeout
// counts from it, not from the connection's last complete write.
func TestSimIdleTimeoutCountsPartialWrite(t *testing.T) {
	payload := make([]byte, 8<<20) // more than any socket buffer holds
	s := newSim(t, simloop.NewClock(), core.Info{IdleTimeout: 10 * time.Second, Protocols: writer(payload)})
	c, _ := s.adopt() // its peer reads nothing
	s.runTo(9 * time.Second)
	require.NoError(t, c.CallbackOnWritable())
	s.runTo(9*time.Second + 1)
	require.NotZero(t, c.Buffered(), "the kernel took part of the write")
	s.runTo(19*time.Second - 1)
	require.Empty(t, s.closed)
	s.runTo(time.Hour)
	require.Equal(t, map[*core.Conn]closing{c: {19 * time.Second, core.ErrTimeout}}, s.closed)
}

// Info.CloseTimeout bounds how long Conn.Close waits for pending output to
// drain: at exactly that long after the Close, with a peer that reads
// nothing, the connection closes with ErrTimeout and the output the kernel
// never took is dropped.
func TestSimCloseTimeoutDropsOutput(t *testing.T) {
	payload := make([]byte, 8<<20) // more than any socket buffer holds
	s := newSim(t, simloop.NewClock(), core.Info{CloseTimeout: 3 * time.Second, Protocols: writer(payload)})
	c, peer := s.adopt()
	require.NoError(t, c.CallbackOnWritable())
	s.runTo(time.Second)
	require.NotZero(t, c.Buffered(), "the peer reads nothing, so output is pending")

	require.NoError(t, c.Close())
	s.runTo(4*time.Second - 1)
	require.Empty(t, s.closed)
	require.True(t, c.Draining())
	s.runTo(time.Hour)
	require.Equal(t, map[*core.Conn]closing{c: {4 * time.Second, core.ErrTimeout}}, s.closed)

	// The peer gets what the kernel took before the close, then the end
	// of the stream: the rest is gone.
	got := 0
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(peer, buf)
		require.NoError(t, err)
		if n == 0 {
			break
		}
		got += n
	}
	require.Less(t, got, len(payload))
}

// In the foreign mode, the application's loop asks how long it may sleep:
// ServiceAdjustTimeout says exactly how long until the next timer, on the
// backend's clock, within the application's own limit, and 0 once one is
// due. Here the test is the application's loop: its sleep is Advance.
func TestSimForeignAdjustTimeout(t *testing.T) {
	clk := simloop.NewClock()
	ctx, err := core.New(core.Info{EventLib: simloop.ForeignName, Foreign: []any{clk},
		Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	th := ctx.Thread(0)
	var fired []time.Duration
	_, err = th.AfterFunc(1500*time.Millisecond, func() { fired = append(fired, clk.Now()) })
	require.NoError(t, err)

	require.Equal(t, 1500*time.Millisecond, th.ServiceAdjustTimeout(time.Hour))
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second))
	clk.Advance(time.Second)
	require.NoError(t, th.Service(0))
	require.Empty(t, fired)

	require.Equal(t, 500*time.Millisecond, th.ServiceAdjustTimeout(time.Hour))
	clk.Advance(500 * time.Millisecond)
	require.Zero(t, th.ServiceAdjustTimeout(time.Hour))
	require.NoError(t, th.Service(0))
	require.Equal(t, []time.Duration{1500 * time.Millisecond}, fired)

	require.Equal(t, time.Hour, th.ServiceAdjustTimeout(time.Hour), "no timer: the application's limit")
}

// Info.IdleTimeout is for stream connections: a UDP socket and a pipe
// that stay quiet are left open, beside a stream that it closes.
func TestSimIdleTimeoutSparesDatagramsAndFiles(t *testing.T) {
	s := newSim(t, simloop.NewClock(), core.Info{IdleTimeout: 10 * time.Second})
	ctx := s.th.Context()
	stream, _ := s.adopt()
	udp, err := ctx.ListenUDP("udp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	var p [2]int
	require.NoError(t, unix.Pipe(p[:]))
	t.Cleanup(func() { unix.Close(p[1]) })
	file, err := ctx.AdoptFile(p[0], "")
	if err != nil {
		unix.Close(p[0])
	}
	require.NoError(t, err)

	s.runTo(time.Hour)
	require.Equal(t, map[*core.Conn]closing{stream: {10 * time.Second, core.ErrTimeout}}, s.closed)
	require.False(t, udp.Closed())
	require.False(t, file.Closed())
}
