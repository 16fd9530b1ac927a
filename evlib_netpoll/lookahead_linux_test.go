//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/plugloop/plugloop/internal/sys"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// lookBackend makes a netpoll backend whose sink ignores its reports: the
// tests ask it what it knows (Pending) instead.
func lookBackend(t *testing.T) evlib.Backend {
	t.Helper()
	be, err := evlib_netpoll.New(evlib.Config{
		Sink:     sinkFunc(func(int, evlib.Events) {}),
		Counters: &evlib.Counters{}, MaxFDs: 1 << 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return be
}

// A listener's helper waits in the runtime poller, which a busy P polls
// only every 10 ms. The look that loaded backends take every lookEvery
// passes finds the queued connection itself: before it, the backend knows
// of nothing to report (the helper's post, if any, is not taken in yet);
// after it, the listener is Readable.
func TestLookAheadFindsConnection(t *testing.T) {
	noLeaks(t)
	be := lookBackend(t)
	lfd := queuedConnection(t, be)
	evlib_netpoll.LookAhead(be)
	require.Equal(t, evlib.Readable, evlib_netpoll.Pending(be, lfd), "the look did not find the queued connection")
	require.NoError(t, be.Remove(lfd))
}

// An idle service thread passes too seldom to look ahead, and with one P
// nothing else polls the runtime's poller while netpoll's poller holds the
// P in epoll_wait: each tick's expiry looks instead, if no pass holds the
// turn, and wakes the thread when it found something.
func TestTickLooksWhileWaiting(t *testing.T) {
	noLeaks(t)
	be := lookBackend(t)
	lfd := queuedConnection(t, be)
	require.False(t, evlib_netpoll.TickLook(be, false), "woke the thread during a pass")
	require.Zero(t, evlib_netpoll.Pending(be, lfd), "looked during a pass, whose turn it is")
	require.True(t, evlib_netpoll.TickLook(be, true), "did not wake the waiting thread")
	require.Equal(t, evlib.Readable, evlib_netpoll.Pending(be, lfd), "the tick's look did not find the queued connection")
	require.NoError(t, be.Remove(lfd))
}

// queuedConnection adds a listener to be, waits until a connection is
// queued on it, and checks that be does not know yet. The listener and
// the client end close with the test.
func queuedConnection(t *testing.T, be evlib.Backend) (lfd int) {
	t.Helper()
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(lfd) })
	require.NoError(t, unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(lfd, 8))
	sa, err := unix.Getsockname(lfd)
	require.NoError(t, err)
	require.NoError(t, be.Add(lfd, evlib.KindListener, evlib.Readable))
	_, err = be.Poll(0) // takes in what Add queued; the helper waits
	require.NoError(t, err)
	require.Zero(t, evlib_netpoll.Pending(be, lfd), "an empty listener")

	c, err := net.Dial("tcp4", (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	waitUntil(t, "the connection never queued", func() bool { return sys.ReadableNow(lfd) })
	require.Zero(t, evlib_netpoll.Pending(be, lfd), "the backend learnt of the connection without a look or a Poll")
	return lfd
}

// The same for a blocked write, whose helper waits for POLLOUT: once the
// peer has read, the look finds the stream writable.
func TestLookAheadFindsWritable(t *testing.T) {
	noLeaks(t)
	be := lookBackend(t)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	fd, peer := sp[0], sp[1]
	defer unix.Close(fd)
	defer unix.Close(peer)
	require.NoError(t, be.Add(fd, evlib.KindStream, evlib.Readable|evlib.Writable))
	_, err = be.Poll(0)
	require.NoError(t, err)
	chunk := make([]byte, 64<<10)
	for {
		_, err := be.(evlib.IO).Write(fd, chunk)
		if errors.Is(err, evlib.ErrWouldBlock) {
			break
		}
		require.NoError(t, err)
	}
	require.Zero(t, evlib_netpoll.Pending(be, fd)&evlib.Writable, "Writable while the write blocks")

	buf := make([]byte, 64<<10)
	for {
		if _, err := unix.Read(peer, buf); err != nil {
			require.ErrorIs(t, err, unix.EAGAIN)
			break
		}
	}
	waitUntil(t, "the stream never became writable", func() bool { return sys.WritableNow(fd) })
	require.Zero(t, evlib_netpoll.Pending(be, fd)&evlib.Writable, "the backend learnt of it without a look or a Poll")
	evlib_netpoll.LookAhead(be)
	require.NotZero(t, evlib_netpoll.Pending(be, fd)&evlib.Writable, "the look did not find the stream writable")
	require.NoError(t, be.Remove(fd))
}

// The tick that keeps netpoll's poller from sleeping while readers wait is
// armed by a pass, expires through netpoll (its expiries are what stop it),
// stops once no pass came for a while, and is armed again by the next
// pass. Close takes its descriptor and goroutine with it (noLeaks).
func TestTickFollowsPasses(t *testing.T) {
	noLeaks(t)
	be := lookBackend(t)
	require.False(t, evlib_netpoll.TickOn(be), "armed before any pass")
	_, err := be.Poll(0)
	require.NoError(t, err)
	require.True(t, evlib_netpoll.TickOn(be), "a pass did not arm the tick")
	waitUntil(t, "the tick never stopped on an idle backend", func() bool { return !evlib_netpoll.TickOn(be) })
	_, err = be.Poll(0)
	require.NoError(t, err)
	require.True(t, evlib_netpoll.TickOn(be), "a pass after the stop did not arm the tick again")
}
