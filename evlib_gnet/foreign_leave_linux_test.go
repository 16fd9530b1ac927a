//go:build linux

package evlib_gnet_test

import (
	"sync/atomic"
	"testing"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestForeignLeavePollingLosesWakeups: the application leaves its
// Polling from its own fd's callback (returning gnet's ErrEngineShutdown,
// the way the backend itself leaves Polling in Poll) in a batch where
// plugloop's sig comes after that fd, then polls again. sig is
// edge-triggered and never read, so its event went with the batch that
// was cut short; sigReq (and the core's wakePending) stay set, so no later
// wakeup writes sig again: posted functions never run while no fd of
// plugloop's becomes ready.
func TestForeignLeavePollingLosesWakeups(t *testing.T) {
	poller, p := pollerWithPipe(t)
	var q [2]int // a second fd of the application's: the "stop here" marker
	require.NoError(t, unix.Pipe2(q[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	t.Cleanup(func() { unix.Close(q[0]); unix.Close(q[1]) })
	require.NoError(t, poller.AddRead(&netpoll.PollAttachment{FD: q[0]}, false))

	ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Foreign: []any{poller},
		Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	t.Cleanup(func() { ctx.Destroy() })
	th := ctx.Thread(0)
	host := evlib_gnet.Dispatcher(poller)

	// poll runs the application's loop until leave says it is done with
	// one of the application's own fds.
	poll := func(leave func(fd int) bool) {
		err := poller.Polling(func(fd int, ev netpoll.IOEvent, fl netpoll.IOFlags) error {
			if fd == p[0] || fd == q[0] {
				var b [16]byte
				unix.Read(fd, b[:])
				if leave(fd) {
					return gerrors.ErrEngineShutdown
				}
				return nil
			}
			return host.Dispatch(fd, ev, fl)
		})
		require.ErrorIs(t, err, gerrors.ErrEngineShutdown)
	}
	var ran [3]atomic.Bool
	post := func(i int) { require.NoError(t, th.Post(func() { ran[i].Store(true) })) }

	// A: a Post, then q. sig became ready before q: served first.
	post(0)
	unix.Write(q[1], []byte("q"))
	poll(func(fd int) bool { return fd == q[0] })
	require.True(t, ran[0].Load(), "sanity: a Post is served before an fd made ready after it")

	// B: p, then a Post: one batch [p, sig]. The application leaves
	// Polling at p, before sig's event was dispatched.
	unix.Write(p[1], []byte("p"))
	post(1)
	poll(func(fd int) bool { return fd == p[0] })

	// C: the application polls again. Another Post, then q.
	post(2)
	unix.Write(q[1], []byte("q"))
	poll(func(fd int) bool { return fd == q[0] })
	for i := 0; i < 3 && !(ran[1].Load() && ran[2].Load()); i++ {
		unix.Write(q[1], []byte("q")) // and again: nothing wakes the thread
		poll(func(fd int) bool { return fd == q[0] })
	}
	require.True(t, ran[1].Load() && ran[2].Load(),
		"posted functions not run by the time the poller served an fd made ready after them (ran: %v %v)", ran[1].Load(), ran[2].Load())
}

// TestForeignLeavePollingStrandsHeldEvents: the same for due. An fd
// of plugloop's is held and due written; in the next batch, [x, p, due],
// the application leaves Polling at its own p. due's edge-triggered event
// went with that batch and dueOn stays set, so no later hold writes due
// again: x's events are held, never handed to the core, however often the
// application polls.
func TestForeignLeavePollingStrandsHeldEvents(t *testing.T) {
	poller, a := pollerWithPipe(t) // a: the application's pipe
	var p, q [2]int                // two more of the application's pipes
	for _, x := range []*[2]int{&p, &q} {
		require.NoError(t, unix.Pipe2(x[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
		t.Cleanup(func() { unix.Close(x[0]); unix.Close(x[1]) })
		require.NoError(t, poller.AddRead(&netpoll.PollAttachment{FD: x[0]}, false))
	}
	log := &serviceLog{}
	be := newLoggedBackend(t, log, poller)
	x, xPeer := pair(t)
	require.NoError(t, be.Add(x, evlib.KindStream, evlib.Readable))
	host := evlib_gnet.Dispatcher(poller)

	var trace []int
	poll := func(leave func(fd int) bool) {
		err := poller.Polling(func(fd int, ev netpoll.IOEvent, fl netpoll.IOFlags) error {
			trace = append(trace, fd)
			switch fd {
			case a[0], p[0], q[0]:
				var b [16]byte
				unix.Read(fd, b[:])
				if fd == a[0] {
					unix.Write(p[1], []byte("p")) // the application's work makes p ready
				}
				if leave(fd) {
					return gerrors.ErrEngineShutdown
				}
				return nil
			}
			return host.Dispatch(fd, ev, fl)
		})
		require.ErrorIs(t, err, gerrors.ErrEngineShutdown)
	}

	// Batch 1: [a, x]: a's work makes p ready, x is held, due written:
	// the next batch is [x, p, due], and the application leaves at p.
	unix.Write(a[1], []byte("a"))
	unix.Write(xPeer, []byte("x"))
	poll(func(fd int) bool { return fd == p[0] })
	require.NotContains(t, log.seq, x, "x was still held when the application left")
	t.Logf("a=%d p=%d q=%d x=%d; the application's Polling saw %v", a[0], p[0], q[0], x, trace)

	// The application polls again, over and over; x stays readable.
	for i := range 3 {
		unix.Write(q[1], []byte("q"))
		poll(func(fd int) bool { return fd == q[0] })
		require.Contains(t, log.seq, x, "round %d: x, readable all along, never reached the core (log %v)", i, log.seq)
	}
}
