//go:build linux

package evlib_gnet_test

import (
	"fmt"
	"testing"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestForeignReapBeforeDue: on an application's poller, an fd whose
// event is held (waiting for due) is removed and handed to CloseFD by a
// loop-only call made between two of the application's dispatches. reap's
// event reaches Dispatch before due's in the next batch (reap is level-
// triggered and was re-queued when the previous batch was harvested, due
// was written later), so the fd is closed while its event is still held;
// a new file that gets the number and is added before due's event then
// receives the old file's event.
func TestForeignReapBeforeDue(t *testing.T) {
	poller, err := netpoll.OpenPoller()
	require.NoError(t, err)
	t.Cleanup(func() { poller.Close() })

	var z [2]int // the application's own pipe
	require.NoError(t, unix.Pipe2(z[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	t.Cleanup(func() { unix.Close(z[0]); unix.Close(z[1]) })
	require.NoError(t, poller.AddRead(&netpoll.PollAttachment{FD: z[0]}, false))

	d := &serviceLog{}
	b := newLoggedBackend(t, d, poller)
	sig, idle, reap, due := evlib_gnet.Specials(b)
	host := evlib_gnet.Dispatcher(poller)

	// An earlier close: y is removed and handed to CloseFD, so reap is
	// readable (and queued in the poller) before anything else.
	y, _ := pair(t)
	require.NoError(t, b.Add(y, evlib.KindStream, evlib.Readable))
	require.NoError(t, b.Remove(y))
	b.(evlib.FDCloser).CloseFD(y)

	// x: readable, watched.
	x, xPeer := pair(t)
	_, err = unix.Write(xPeer, []byte("old"))
	require.NoError(t, err)
	require.NoError(t, b.Add(x, evlib.KindStream, evlib.Readable))

	phase := 0
	var seq []string
	var bogus []string
	var newPeer = -1
	t.Cleanup(func() {
		if newPeer >= 0 {
			unix.Close(newPeer)
			unix.Close(x) // the new file at x's number
		}
	})
	d.onFD = func(pfd *unix.PollFd) {
		seq = append(seq, fmt.Sprintf("ServiceFD(%d,%#x)", pfd.Fd, pfd.Revents))
		if phase >= 4 && int(pfd.Fd) == x {
			// x is now the new file, which nobody wrote to: is it ready?
			p := []unix.PollFd{{Fd: int32(x), Events: unix.POLLIN}}
			unix.Poll(p, 0)
			if p[0].Revents&pfd.Revents == 0 {
				bogus = append(bogus, fmt.Sprintf("fd %d handed revents %#x, but the file now at that number has %#x", x, pfd.Revents, p[0].Revents))
			}
		}
	}
	err = poller.Polling(func(fd int, ev netpoll.IOEvent, fl netpoll.IOFlags) error {
		name := map[int]string{reap: "reap", due: "due", sig: "sig", idle: "idle", x: "x", z[0]: "z"}[fd]
		seq = append(seq, fmt.Sprintf("%s(%d)@%d", name, fd, phase))
		switch {
		case fd == z[0]:
			var buf [8]byte
			unix.Read(z[0], buf[:])
			if phase == 3 {
				// The application opens a new connection and has plugloop
				// watch it (a loop-only call); it gets x's number.
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				require.NoError(t, err)
				n, peer := fds[0], fds[1]
				if peer == x {
					n, peer = peer, n // a socket pair's ends are alike
				}
				newPeer = peer
				if n != x {
					require.NoError(t, unix.Dup3(n, x, unix.O_CLOEXEC))
					unix.Close(n)
				}
				require.NoError(t, b.Add(x, evlib.KindStream, evlib.Readable))
				phase = 4
			}
			return nil
		}
		host.Dispatch(fd, ev, fl)
		switch {
		case phase == 0 && fd == reap:
			// y is closed. The application's pipe becomes ready.
			unix.Write(z[1], []byte("z"))
			phase = 1
		case phase == 1 && fd == x:
			// x's event is held; due was written. A loop-only call
			// closes x's connection: Remove, then CloseFD.
			require.NoError(t, b.Remove(x))
			b.(evlib.FDCloser).CloseFD(x)
			phase = 2
		case phase == 2 && fd == reap:
			phase = 3
		case fd == due:
			return gerrors.ErrEngineShutdown
		}
		if len(seq) > 50 {
			return gerrors.ErrEngineShutdown
		}
		return nil
	})
	require.ErrorIs(t, err, gerrors.ErrEngineShutdown)
	t.Logf("sequence: %v", seq)
	require.Equal(t, 4, phase, "the scenario did not unfold as planned: %v", seq)
	require.Empty(t, bogus, "the closed fd's held event went to the new file with its number")
}
