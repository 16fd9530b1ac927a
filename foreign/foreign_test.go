//go:build unix

package foreign_test

import (
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The application's unix.Poll loop serves its own pipe and plugloop's echo,
// wakes up for CancelService, and keeps running after Destroy with nothing
// of plugloop's left in its set.
func TestPollSetHost(t *testing.T) {
	set := new(foreign.PollSet)
	var cancelled atomic.Int32
	proto := echo.Protocol("echo")
	inner := proto.Callback
	proto.Callback = func(ev core.Event) error {
		if ev.Reason == core.ReasonEventWaitCancelled {
			cancelled.Add(1)
		}
		return inner(ev)
	}
	ctx, err := core.New(core.Info{EventLib: foreign.Name, Protocols: []core.Protocol{set.Protocol(proto)}})
	require.NoError(t, err)
	require.Equal(t, 1, set.Len(), "the wake fd is announced")
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	require.NoError(t, err)
	require.ErrorIs(t, ctx.Run(t.Context()), evlib.ErrAppDriven, "the application's loop drives the thread, not Run")

	var p [2]int
	require.NoError(t, unix.Pipe(p[:]))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	mine := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	th := ctx.Thread(0)

	stop := make(chan struct{})
	loopDone := make(chan int)
	go func() { // the application's loop
		pipeReads := 0
		for {
			select {
			case <-stop:
				loopDone <- pipeReads
				return
			default:
			}
			err := set.Poll(th, mine, 20*time.Millisecond)
			if err != nil && err != core.ErrDestroyed {
				t.Error(err)
			}
			if mine[0].Revents != 0 {
				var b [16]byte
				n, _ := unix.Read(p[0], b[:])
				pipeReads += n
			}
			if err == core.ErrDestroyed && set.Len() != 0 {
				t.Errorf("after destroy the set still holds %d fds", set.Len())
			}
		}
	}()
	require.NoError(t, echo.Check(ln.Addr().String(), 20))
	unix.Write(p[1], []byte("app"))
	require.NoError(t, ctx.CancelService())
	require.Eventually(t, func() bool { return cancelled.Load() > 0 }, 5*time.Second, time.Millisecond)
	require.NoError(t, th.Post(func() { ctx.Destroy() }))
	<-ctx.Done()
	close(stop)
	require.Equal(t, 3, <-loopDone, "the app's own fd was served and never touched by plugloop")
	require.Equal(t, 0, set.Len())
}

// Several service threads in foreign mode: one application loop per
// thread, each with a PollSet following its own thread's fds.
func TestPollSetPerThread(t *testing.T) {
	sets := []*foreign.PollSet{{Thread: 0}, {Thread: 1}}
	proto := echo.Protocol("echo")
	for _, s := range sets {
		proto = s.Protocol(proto)
	}
	ctx, err := core.New(core.Info{EventLib: foreign.Name, CountThreads: 2, Protocols: []core.Protocol{proto}})
	require.NoError(t, err)
	require.Equal(t, 1, sets[0].Len(), "thread 0's wake fd only")
	require.Equal(t, 1, sets[1].Len(), "thread 1's wake fd only")
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	require.NoError(t, err)
	require.Equal(t, 2, sets[0].Len())
	loops := make(chan error, 2)
	for i, s := range sets {
		go func() {
			for {
				if err := s.Poll(ctx.Thread(i), nil, 20*time.Millisecond); err != nil {
					loops <- err
					return
				}
			}
		}()
	}
	for range 4 {
		require.NoError(t, echo.Check(ln.Addr().String(), 20))
	}
	require.NoError(t, ctx.Thread(0).Post(func() { ctx.Destroy() }))
	<-ctx.Done()
	require.ErrorIs(t, <-loops, core.ErrDestroyed)
	require.ErrorIs(t, <-loops, core.ErrDestroyed)
	require.Zero(t, sets[0].Len()+sets[1].Len())
}

// Destroy from another goroutine ends a Poll that sleeps with no limit,
// and the set's own descriptor is closed with it.
func TestPollSetDestroyWhileWaiting(t *testing.T) {
	before := openFDs(t)
	set := new(foreign.PollSet)
	ctx, err := core.New(core.Info{EventLib: foreign.Name, Protocols: []core.Protocol{set.Protocol(echo.Protocol("echo"))}})
	require.NoError(t, err)
	th := ctx.Thread(0)
	polls := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		for {
			select {
			case polls <- struct{}{}:
			default:
			}
			if err := set.Poll(th, nil, -1); err != nil {
				done <- err
				return
			}
		}
	}()
	<-polls
	time.Sleep(50 * time.Millisecond) // most likely asleep in unix.Poll by now
	require.NoError(t, ctx.Destroy())
	select {
	case err := <-done:
		require.ErrorIs(t, err, core.ErrDestroyed)
	case <-time.After(10 * time.Second):
		t.Fatal("Poll still asleep after Destroy")
	}
	require.Zero(t, set.Len())
	require.Equal(t, before, openFDs(t), "descriptors open before and after")
}

// openFDs counts this process' open descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		ents, err = os.ReadDir("/dev/fd")
	}
	require.NoError(t, err)
	return len(ents)
}

// A goroutine that adopts an fd while the application's loop is between
// polls holds the thread through RAW_ADOPT; a Poll meanwhile is no failure
// (the holder wakes the loop when it is done), so a host loop that stops on
// any error goes on serving plugloop. A Poll called while one of the same
// set runs is refused.
func TestPollSetWhileAnotherGoroutineHolds(t *testing.T) {
	set := new(foreign.PollSet)
	inAdopt, hold := make(chan struct{}), make(chan struct{})
	var nested error
	proto := echo.Protocol("echo")
	inner := proto.Callback
	proto.Callback = func(ev core.Event) error {
		if ev.Reason == core.ReasonRawAdopt {
			close(inAdopt)
			<-hold
		}
		return inner(ev)
	}
	ctx, err := core.New(core.Info{EventLib: foreign.Name, Protocols: []core.Protocol{set.Protocol(proto)}})
	require.NoError(t, err)
	defer ctx.Destroy()
	th := ctx.Thread(0)
	require.NoError(t, set.Poll(th, nil, 0))
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	defer unix.Close(p[1])
	adopted := make(chan error, 1)
	go func() {
		_, err := ctx.AdoptFD(p[0], "echo")
		adopted <- err
	}()
	<-inAdopt
	require.NoError(t, set.Poll(th, nil, 0), "Poll while another goroutine holds the thread")
	close(hold)
	require.NoError(t, <-adopted)
	require.NoError(t, th.Post(func() { nested = set.Poll(th, nil, 0) }))
	for nested == nil {
		require.NoError(t, set.Poll(th, nil, -1))
	}
	require.ErrorIs(t, nested, core.ErrInService, "Poll inside a Poll's callback")
}

// An fd plugloop watches with no events stays in the set's wait: poll(2)
// reports POLLHUP and POLLERR whatever the events asked for, which is how
// a paused connection learns at once that its peer reset it (the backend
// declares evlib.CapHangupWithoutInterest). Nothing else is due here, so
// the loop waits with no limit: a set that left such an fd out of its
// wait would sleep through the reset, and the core would never read the
// paused input the hang-up ends and drop the fd (DEL_POLL_FD).
func TestPollSetHangupWithoutInterest(t *testing.T) {
	set := new(foreign.PollSet)
	var fd atomic.Int64
	fd.Store(-1)
	paused, dropped := make(chan struct{}), make(chan struct{})
	proto := core.Protocol{Name: "paused", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			fd.Store(int64(ev.Conn.FD()))
			return ev.Conn.RxFlowControl(false)
		case core.ReasonChangeModePollFD:
			if int64(ev.Poll.FD) == fd.Load() && ev.Poll.Events == 0 {
				close(paused)
			}
		case core.ReasonDelPollFD:
			if int64(ev.Poll.FD) == fd.Load() {
				close(dropped)
			}
		}
		return nil
	}}
	ctx, err := core.New(core.Info{EventLib: foreign.Name, CloseTimeout: time.Minute, Protocols: []core.Protocol{set.Protocol(proto)}})
	require.NoError(t, err)
	require.NotZero(t, ctx.Caps()&evlib.CapHangupWithoutInterest, "the foreign backend declares evlib.CapHangupWithoutInterest")
	srv, cli := testkit.TCPPair(t)
	_, err = ctx.AdoptConn(srv, "paused")
	require.NoError(t, err)
	loop := make(chan error, 1)
	go func() { // the application's loop
		for {
			if err := set.Poll(ctx.Thread(0), nil, -1); err != nil {
				loop <- err
				return
			}
		}
	}()
	// The core drops the interest lazily, when input comes for the
	// paused connection.
	_, err = cli.Write([]byte("x"))
	require.NoError(t, err)
	select {
	case <-paused: // the set's wait watches it with no events from now on
	case <-time.After(10 * time.Second):
		t.Errorf("fd %d was not changed to no events after its rx was paused and input came", fd.Load())
	}
	require.NoError(t, cli.(*net.TCPConn).SetLinger(0))
	require.NoError(t, cli.Close())
	select {
	case <-dropped:
	case <-time.After(10 * time.Second):
		t.Errorf("fd %d, paused (no events), was not dropped after its peer's reset: the set's wait did not report the hang-up", fd.Load())
	}
	require.NoError(t, ctx.Destroy())
	require.ErrorIs(t, <-loop, core.ErrDestroyed)
}
