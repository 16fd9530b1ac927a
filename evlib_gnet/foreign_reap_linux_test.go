//go:build linux && !poll_opt

package evlib_gnet

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// reapDriver is the core side of a backend on a foreign poller, reduced to
// what Dispatch calls; onFD sees every ServiceFD.
type reapDriver struct {
	onFD func(pfd *unix.PollFd)
}

func (d *reapDriver) Ready(int, evlib.Events) {}
func (d *reapDriver) ServiceFD(pfd *unix.PollFd) error {
	if d.onFD != nil {
		d.onFD(pfd)
	}
	pfd.Revents = 0
	return nil
}
func (d *reapDriver) Service(time.Duration) error                      { return nil }
func (d *reapDriver) ServiceAdjustTimeout(time.Duration) time.Duration { return -1 }

func reapPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	return fds[0], fds[1]
}

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

	d := &reapDriver{}
	be, err := New(evlib.Config{Sink: d, Counters: &evlib.Counters{}, MaxFDs: 1 << 16, Foreign: poller,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	b := be.(*Backend)
	host := Dispatcher(poller)

	// An earlier close: y is removed and handed to CloseFD, so reap is
	// readable (and queued in the poller) before anything else.
	y, yPeer := reapPair(t)
	t.Cleanup(func() { unix.Close(yPeer) })
	require.NoError(t, b.Add(y, evlib.KindStream, evlib.Readable))
	require.NoError(t, b.Remove(y))
	b.CloseFD(y)

	// x: readable, watched.
	x, xPeer := reapPair(t)
	t.Cleanup(func() { unix.Close(xPeer) })
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
		name := map[int]string{b.reap.R: "reap", b.due.R: "due", b.sig.R: "sig", b.idle.R: "idle", x: "x", z[0]: "z"}[fd]
		seq = append(seq, fmt.Sprintf("%s(%d)@%d", name, fd, phase))
		switch {
		case fd == z[0]:
			var buf [8]byte
			unix.Read(z[0], buf[:])
			if phase == 3 {
				// The application opens a new connection and has plugloop
				// watch it (a loop-only call); it gets x's number.
				n, peer := reapPair(t)
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
		case phase == 0 && fd == b.reap.R:
			// y is closed. The application's pipe becomes ready.
			unix.Write(z[1], []byte("z"))
			phase = 1
		case phase == 1 && fd == x:
			// x's event is held; due was written. A loop-only call
			// closes x's connection: Remove, then CloseFD.
			require.NoError(t, b.Remove(x))
			b.CloseFD(x)
			phase = 2
		case phase == 2 && fd == b.reap.R:
			phase = 3
		case fd == b.due.R:
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
