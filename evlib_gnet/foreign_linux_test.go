//go:build linux

package evlib_gnet_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/panjf2000/gnet/v2/pkg/queue"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// plugloop attached to a gnet Poller the application owns and polls: the
// application serves its own pipe in its Polling callback and forwards the
// rest to the Host; echo, CancelService, Post and timers all run on the
// application's Polling goroutine; Destroy removes every registration and
// leaves the poller running, open and the application's.
func TestForeignPoller(t *testing.T) {
	poller, p := pollerWithPipe(t)

	var cancelled atomic.Int32
	proto := echo.Protocol("echo")
	inner := proto.Callback
	proto.Callback = func(ev core.Event) error {
		if ev.Reason == core.ReasonEventWaitCancelled {
			cancelled.Add(1)
		}
		return inner(ev)
	}
	ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Foreign: []any{poller}, Protocols: []core.Protocol{proto}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	require.NoError(t, err)
	host := evlib_gnet.Dispatcher(poller)
	require.True(t, host.Owns(ln.FD()), "the listener is registered in the application's poller")
	require.False(t, host.Owns(p[0]), "the application's pipe is not plugloop's")
	th := ctx.Thread(0)
	require.ErrorIs(t, ctx.Run(t.Context()), evlib.ErrAppDriven, "the application's Polling drives the thread, not Run")

	got := make(chan string, 16)
	stop := hostPolling(t, poller, host, func(fd int) bool {
		if fd != p[0] {
			return false
		}
		var b [16]byte
		n, _ := unix.Read(p[0], b[:])
		got <- string(b[:max(n, 0)])
		return true
	})

	require.NoError(t, echo.Check(ln.Addr().String(), 20))
	unix.Write(p[1], []byte("app"))
	require.Equal(t, "app", <-got, "the application's loop serves its own fd")

	require.NoError(t, ctx.CancelService())
	require.Eventually(t, func() bool { return cancelled.Load() > 0 }, 5*time.Second, time.Millisecond)

	fired := make(chan time.Duration, 1)
	start := time.Now()
	require.NoError(t, th.Post(func() {
		_, err := th.AfterFunc(30*time.Millisecond, func() { fired <- time.Since(start) })
		assert.NoError(t, err)
	}))
	select {
	case d := <-fired:
		require.GreaterOrEqual(t, d, 30*time.Millisecond, "the timer fired early")
	case <-time.After(10 * time.Second):
		t.Fatal("a timer on a foreign poller never fired")
	}
	require.NoError(t, echo.Check(ln.Addr().String(), 20))

	lnFD := ln.FD()
	require.NoError(t, th.Post(func() { ctx.Destroy() }))
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Destroy on a foreign poller never finished")
	}
	require.False(t, host.Owns(lnFD), "Destroy deleted plugloop's registrations")

	// The application's poller still runs and serves its pipe.
	unix.Write(p[1], []byte("more"))
	select {
	case s := <-got:
		require.Equal(t, "more", s)
	case <-time.After(10 * time.Second):
		t.Fatal("the application's poller stopped serving its pipe after Destroy")
	}
	stop()
}

// pollerWithPipe opens an application's poller that watches the read end
// of a pipe of its own (p[0]; p[1] writes to it); both close when the test
// ends.
func pollerWithPipe(t *testing.T) (*netpoll.Poller, [2]int) {
	poller, err := netpoll.OpenPoller()
	require.NoError(t, err)
	t.Cleanup(func() { poller.Close() })
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	require.NoError(t, poller.AddRead(&netpoll.PollAttachment{FD: p[0]}, false))
	return poller, p
}

// hostPolling runs the application's Polling loop on poller: own serves
// the application's fds (it reports whether fd was one), the rest go to
// host. stop ends the loop and checks that it ran until then.
func hostPolling(t *testing.T, poller *netpoll.Poller, host *evlib_gnet.Host, own func(fd int) bool) (stop func()) {
	polled := make(chan error, 1)
	go func() {
		polled <- poller.Polling(func(fd int, ev netpoll.IOEvent, fl netpoll.IOFlags) error {
			if own != nil && own(fd) {
				return nil
			}
			return host.Dispatch(fd, ev, fl)
		})
	}()
	return func() {
		t.Helper()
		require.NoError(t, poller.Trigger(queue.HighPriority, func(any) error { return gerrors.ErrEngineShutdown }, nil))
		require.ErrorIs(t, <-polled, gerrors.ErrEngineShutdown, "Polling ended before the application stopped it")
	}
}

// recorder is a Sink that records reports.
type recorder struct {
	mu  sync.Mutex
	got map[int]evlib.Events
	n   int
}

func (r *recorder) Ready(fd int, ev evlib.Events) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[int]evlib.Events{}
	}
	r.got[fd] = ev
	r.n++
}

func (r *recorder) take() (map[int]evlib.Events, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, n := r.got, r.n
	r.got, r.n = nil, 0
	return g, n
}

func newBackend(t *testing.T) (evlib.Backend, *recorder, *evlib.Counters) {
	t.Helper()
	rec, ctr := &recorder{}, &evlib.Counters{}
	be, err := evlib_gnet.New(evlib.Config{Sink: rec, Counters: ctr, MaxFDs: 1 << 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return be, rec, ctr
}

func pair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// Single passes leave and re-enter gnet's Polling over and over: every
// Poll(0) returns, each ready fd is reported once per pass, with the count
// Poll returns, and a pass is two epoll_waits (Waits is exact here).
func TestPollSinglePass(t *testing.T) {
	be, rec, ctr := newBackend(t)
	var fds, peers [3]int
	for i := range fds {
		fds[i], peers[i] = pair(t)
		require.NoError(t, be.Add(fds[i], evlib.KindStream, evlib.Readable))
	}
	for range 200 {
		w0 := ctr.Waits.Load()
		n, err := be.Poll(0)
		require.NoError(t, err)
		require.Zero(t, n)
		require.Equal(t, uint64(2), ctr.Waits.Load()-w0, "waits in one Poll(0)")
	}
	for i := range fds {
		_, err := unix.Write(peers[i], []byte("x"))
		require.NoError(t, err)
	}
	for range 50 {
		n, err := be.Poll(time.Second)
		require.NoError(t, err)
		got, calls := rec.take()
		require.Equal(t, 3, n, "three readable fds, level-triggered")
		require.Equal(t, 3, calls, "each fd reported once per pass")
		for i := range fds {
			require.Equal(t, evlib.Readable, got[fds[i]])
		}
	}
	start := time.Now()
	for i := range fds {
		require.NoError(t, be.Modify(fds[i], 0))
	}
	n, err := be.Poll(20 * time.Millisecond)
	require.NoError(t, err)
	require.Zero(t, n)
	require.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond, "Poll(20ms) returned early with nothing ready")

	// A Wake from another goroutine ends a Poll(-1), many times over.
	w := be.(evlib.Waker)
	for range 50 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			be.Poll(-1)
		}()
		w.Wake()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Poll(-1) ignored Wake")
		}
	}
}

// Interest changes map onto gnet's calls and every epoll_ctl is counted:
// write-only from a registered fd is Delete+AddWrite.
func TestInterestChanges(t *testing.T) {
	be, _, ctr := newBackend(t)
	a, _ := pair(t)
	step := func(ev evlib.Events, want uint64) {
		t.Helper()
		c := ctr.InterestChanges.Load()
		require.NoError(t, be.Modify(a, ev))
		require.Equal(t, want, ctr.InterestChanges.Load()-c, "Modify to %v", ev)
	}
	c := ctr.InterestChanges.Load()
	require.NoError(t, be.Add(a, evlib.KindStream, 0))
	require.Equal(t, c, ctr.InterestChanges.Load(), "Add with interest 0 registers nothing")
	step(0, 0)
	step(evlib.Writable, 1)                // AddWrite
	step(evlib.Readable|evlib.Writable, 1) // ModReadWrite
	step(evlib.Writable, 2)                // Delete+AddWrite
	step(evlib.Readable, 1)                // ModRead
	step(evlib.Writable, 2)                // Delete+AddWrite
	step(0, 1)                             // Delete
	step(evlib.Readable, 1)                // AddRead
	step(evlib.Readable, 0)                // unchanged
	c = ctr.InterestChanges.Load()
	require.NoError(t, be.Remove(a))
	require.Equal(t, uint64(1), ctr.InterestChanges.Load()-c, "Remove of a registered fd")
	require.NoError(t, be.Add(a, evlib.KindStream, 0))
	c = ctr.InterestChanges.Load()
	require.NoError(t, be.Remove(a))
	require.Equal(t, c, ctr.InterestChanges.Load(), "Remove of an fd with interest 0 is no syscall")
}

// Run returns when its context is cancelled and can be entered again; a
// Service pass in between works too (Polling is left and re-entered).
func TestRunAgain(t *testing.T) {
	ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	require.NoError(t, err)
	for range 3 {
		cctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- ctx.Run(cctx) }()
		require.NoError(t, echo.Check(ln.Addr().String(), 20))
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
		require.NoError(t, ctx.Thread(0).Service(0))
	}
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	require.NoError(t, echo.Check(ln.Addr().String(), 20))
	require.NoError(t, ctx.Thread(0).Post(func() { ctx.Destroy() }))
	require.NoError(t, <-done)
}

// Destroy on another goroutine, while the application's Polling goroutine
// runs plugloop's passes (a Post that sets a timer, again and again), never
// closes the backend beside a pass that schedules the next one (the race
// detector watches), and leaves the poller running.
func TestForeignDestroyWhilePassing(t *testing.T) {
	for range 20 {
		poller, err := netpoll.OpenPoller()
		require.NoError(t, err)
		ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Foreign: []any{poller}, Protocols: []core.Protocol{echo.Protocol("echo")}})
		require.NoError(t, err)
		stop := hostPolling(t, poller, evlib_gnet.Dispatcher(poller), nil)
		th := ctx.Thread(0)
		posting := make(chan struct{})
		go func() {
			defer close(posting)
			for th.Post(func() { th.AfterFunc(time.Hour, func() {}) }) == nil {
				time.Sleep(20 * time.Microsecond)
			}
		}()
		time.Sleep(2 * time.Millisecond)
		require.NoError(t, ctx.Destroy())
		<-ctx.Done()
		<-posting
		stop()
		require.NoError(t, poller.Close())
	}
}

// Posts arriving without pause from another goroutine do not starve the
// application's own fds on its poller: a wakeup that comes while
// plugloop's pass runs is taken up through the poller's next wait, with
// the fds ready by then.
func TestForeignPostsDoNotStarvePoller(t *testing.T) {
	poller, p := pollerWithPipe(t)
	ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Foreign: []any{poller}, Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	var served atomic.Bool
	stop := hostPolling(t, poller, evlib_gnet.Dispatcher(poller), func(fd int) bool {
		if fd != p[0] {
			return false
		}
		var b [8]byte
		unix.Read(p[0], b[:])
		served.Store(true)
		return true
	})
	th := ctx.Thread(0)
	var posts atomic.Int64
	postsDone := make(chan struct{})
	go func() {
		defer close(postsDone)
		for !served.Load() && posts.Load() < 5_000_000 {
			if th.Post(func() {}) != nil {
				return
			}
			posts.Add(1)
		}
	}()
	go func() {
		for !served.Load() && posts.Load() < 5_000_000 {
			if th.Post(func() {}) != nil {
				return
			}
		}
	}()
	for posts.Load() < 1000 {
		time.Sleep(time.Millisecond)
	}
	_, err = unix.Write(p[1], []byte("x"))
	require.NoError(t, err)
	<-postsDone
	require.True(t, served.Load(), "the application's pipe was not served during %d posts", posts.Load())
	require.NoError(t, th.Post(func() { ctx.Destroy() }))
	<-ctx.Done()
	stop()
}
