//go:build linux

package evlib_gnet_test

import (
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// taskDriver is the core side of a backend attached to a foreign poller,
// reduced to what Dispatch calls. Its Service(0) runs onService, which may
// Wake the backend from inside the pass, the way a timer of the backend's
// own or a Post landing right after the core's pass does.
type taskDriver struct {
	services  atomic.Int64
	onService func(n int64)
}

func (d *taskDriver) Ready(int, evlib.Events)                          {}
func (d *taskDriver) ServiceFD(*unix.PollFd) error                     { return nil }
func (d *taskDriver) ServiceAdjustTimeout(time.Duration) time.Duration { return -1 }
func (d *taskDriver) Service(time.Duration) error                      { d.onService(d.services.Add(1)); return nil }

func foreignBackend(t *testing.T, d *taskDriver) (evlib.Backend, [2]int, func(func(fd int) bool) func()) {
	poller, p := pollerWithPipe(t)
	be, err := evlib_gnet.New(evlib.Config{Sink: d, Counters: &evlib.Counters{}, MaxFDs: 1 << 16,
		Foreign: poller, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return be, p, func(own func(fd int) bool) func() {
		return hostPolling(t, poller, evlib_gnet.Dispatcher(poller), own)
	}
}

// A wakeup that comes while plugloop's pass runs on the application's
// poller is not lost: the thread runs another pass, and later wakeups from
// other goroutines still reach it.
func TestForeignWakeDuringTask(t *testing.T) {
	var be evlib.Backend
	passes := make(chan int64, 16)
	d := &taskDriver{onService: func(n int64) {
		if n == 1 {
			be.(evlib.Waker).Wake() // inside the task
		}
		passes <- n
	}}
	be, _, start := foreignBackend(t, d)
	stop := start(nil)
	defer stop()
	w := be.(evlib.Waker)
	require.NoError(t, w.Wake())
	for want := int64(1); want <= 2; want++ {
		select {
		case n := <-passes:
			require.Equal(t, want, n)
		case <-time.After(10 * time.Second):
			t.Fatalf("pass %d never ran: a wakeup made inside the pass before it was lost (hang guard)", want)
		}
	}
	for want := int64(3); want <= 5; want++ {
		require.NoError(t, w.Wake())
		select {
		case n := <-passes:
			require.Equal(t, want, n)
		case <-time.After(10 * time.Second):
			t.Fatalf("pass %d never ran: Wake from another goroutine ignored after a wakeup inside a pass (hang guard)", want)
		}
	}
}

// A pass that is woken from inside every time does not keep the
// application's poller from its fds: the application's fd that
// became ready meanwhile is served after the next pass, not after the
// wakeups stop.
func TestForeignWakeInEveryTaskLetsPollerIn(t *testing.T) {
	const most = 100_000
	var be evlib.Backend
	var p [2]int
	var served atomic.Bool
	d := &taskDriver{}
	d.onService = func(n int64) {
		if n == 1 {
			if _, err := unix.Write(p[1], []byte("x")); err != nil { // the application's fd is ready from now on
				t.Error(err)
			}
		}
		if n < most && !served.Load() {
			be.(evlib.Waker).Wake()
		}
	}
	be, p, start := foreignBackend(t, d)
	var at atomic.Int64
	gotIt := make(chan struct{})
	stop := start(func(fd int) bool {
		if fd != p[0] {
			return false
		}
		var b [8]byte
		unix.Read(p[0], b[:])
		if !served.Swap(true) {
			at.Store(d.services.Load())
			close(gotIt)
		}
		return true
	})
	defer stop()
	require.NoError(t, be.(evlib.Waker).Wake())
	select {
	case <-gotIt:
	case <-time.After(10 * time.Second):
		t.Fatal("the application's pipe was never served (hang guard)")
	}
	require.Less(t, at.Load(), int64(10), "passes run before the application's ready fd was served")
}

// On a foreign poller the hang-up of an adopted pipe reaches the core: the
// read end of a pipe whose writer closed is reported by epoll as EPOLLHUP
// alone, which Dispatch must hand on (as POLLHUP) for the core to read the
// end of the stream and close.
func TestForeignPipeHangup(t *testing.T) {
	poller, _ := pollerWithPipe(t)
	got := make(chan string, 4)
	closed := make(chan error, 1)
	ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Foreign: []any{poller},
		Protocols: []core.Protocol{{Name: "pipe", Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawRX:
				got <- string(ev.Data)
			case core.ReasonRawClose:
				closed <- ev.Err
			}
			return nil
		}}}})
	require.NoError(t, err)
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	_, err = ctx.AdoptFD(p[0], "pipe")
	if err != nil {
		unix.Close(p[0])
	}
	defer unix.Close(p[1])
	require.NoError(t, err)
	stop := hostPolling(t, poller, evlib_gnet.Dispatcher(poller), nil)
	defer stop()
	_, err = unix.Write(p[1], []byte("hi"))
	require.NoError(t, err)
	select {
	case s := <-got:
		require.Equal(t, "hi", s)
	case <-time.After(10 * time.Second):
		t.Fatal("no RAW_RX from the adopted pipe (hang guard)")
	}
	require.NoError(t, unix.Close(p[1]))
	select {
	case err := <-closed:
		require.ErrorIs(t, err, io.EOF)
	case <-time.After(10 * time.Second):
		t.Fatal("no RAW_CLOSE after the pipe's writer closed (hang guard)")
	}
	require.NoError(t, ctx.Thread(0).Post(func() { ctx.Destroy() }))
	<-ctx.Done()
}

// Service threads attached to one application poller that hand work to
// each other with Post, each hop a wakeup made inside the other thread's
// pass, do not keep the poller from its fds: the application's pipe,
// made ready by one hop, is served a few hops later, not once the
// ping-pong (bounded at most hops) ends by itself. Two contexts and two
// threads of one context are the same case for the poller.
func TestForeignCrossThreadPostsDoNotStarvePoller(t *testing.T) {
	for _, tc := range []struct {
		name    string
		threads func(t *testing.T, poller *netpoll.Poller) (a, b *core.Thread, destroy func())
	}{
		{"two contexts", func(t *testing.T, poller *netpoll.Poller) (*core.Thread, *core.Thread, func()) {
			a, destroyA := foreignThreads(t, poller, 1)
			b, destroyB := foreignThreads(t, poller, 1)
			return a[0], b[0], func() { destroyA(); destroyB() }
		}},
		{"two threads", func(t *testing.T, poller *netpoll.Poller) (*core.Thread, *core.Thread, func()) {
			th, destroy := foreignThreads(t, poller, 2)
			return th[0], th[1], destroy
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const (
				writeAt = 100    // the hop that makes the pipe ready
				most    = 20_000 // the hop where the ping-pong stops by itself
			)
			poller, p := pollerWithPipe(t)
			thA, thB, destroy := tc.threads(t, poller)
			var hops, servedAt atomic.Int64
			var served atomic.Bool
			gotIt := make(chan struct{})
			stop := hostPolling(t, poller, evlib_gnet.Dispatcher(poller), func(fd int) bool {
				if fd != p[0] {
					return false
				}
				var b [8]byte
				unix.Read(p[0], b[:])
				if !served.Swap(true) {
					servedAt.Store(hops.Load())
					close(gotIt)
				}
				return true
			})
			defer stop()
			defer destroy() // while the poller is still polled
			var fA, fB func()
			hop := func(to *core.Thread, f func()) {
				n := hops.Add(1)
				if n == writeAt {
					if _, err := unix.Write(p[1], []byte("x")); err != nil {
						t.Error(err)
					}
				}
				if n < most && !served.Load() {
					to.Post(f)
				}
			}
			fA = func() { hop(thB, fB) }
			fB = func() { hop(thA, fA) }
			require.NoError(t, thA.Post(fA))
			select {
			case <-gotIt:
			case <-time.After(20 * time.Second):
				t.Fatalf("the application's pipe was never served (hang guard; %d hops)", hops.Load())
			}
			require.Less(t, servedAt.Load(), int64(most), "the pipe was served only once the ping-pong stopped by itself")
			require.Less(t, servedAt.Load()-writeAt, int64(10), "hops between the pipe becoming ready and being served")
		})
	}
}

// foreignThreads creates a context of n service threads, all attached to
// poller. destroy destroys it; the poller must still be polled then.
func foreignThreads(t *testing.T, poller *netpoll.Poller, n int) (th []*core.Thread, destroy func()) {
	foreign := make([]any, n)
	for i := range foreign {
		foreign[i] = poller
	}
	ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Foreign: foreign, CountThreads: n,
		Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	th = make([]*core.Thread, n)
	for i := range th {
		th[i] = ctx.Thread(i)
	}
	return th, func() {
		t.Helper()
		require.NoError(t, th[0].Post(func() { ctx.Destroy() }))
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("Destroy on a foreign poller never finished (hang guard)")
		}
	}
}
