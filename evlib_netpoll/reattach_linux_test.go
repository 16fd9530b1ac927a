//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A stream paused long enough to be taken out of netpoll gets a hang-up
// helper, a goroutine waiting on a dup. Once rx resumed and the core caught
// up, the stream is netpoll's again and holds its fd and netpoll's dup
// only, as DupsPerFD says: the helper ended with the detach. It used to
// wait for the stream's end, the runtime's poller never waking it for new
// input, which netpoll's poller takes first.
func TestReattachEndsHangupHelper(t *testing.T) {
	be, s := bareBackend(t)
	sc, cli := testkit.TCPPair(t)
	f, err := sc.(*net.TCPConn).File()
	require.NoError(t, err)
	sc.Close()
	fd := int(f.Fd())
	require.NoError(t, unix.SetNonblock(fd, true))
	defer f.Close()

	require.NoError(t, be.Add(fd, evlib.KindStream, evlib.Readable))
	_, err = cli.Write([]byte("abc"))
	require.NoError(t, err)
	s.await(t, be, fd) // reported, left unread
	require.NoError(t, be.Modify(fd, 0))
	d0 := evlib_netpoll.Detaches()
	waitUntil(t, "the paused stream was never detached", func() bool {
		_, err := be.Poll(5 * time.Millisecond)
		require.NoError(t, err)
		return evlib_netpoll.Detaches() > d0
	})
	require.Equal(t, 3, sameSocket(t, fd), "detached and paused: its fd, netpoll's dup holding the input, the hang-up helper's dup")

	require.NoError(t, be.Modify(fd, evlib.Readable))
	r0 := evlib_netpoll.Reattaches()
	buf := make([]byte, 64)
	var got []byte
	for evlib_netpoll.Reattaches() == r0 {
		s.await(t, be, fd)
		n, err := be.(evlib.IO).Read(fd, buf)
		if err != nil {
			require.ErrorIs(t, err, evlib.ErrWouldBlock)
		}
		got = append(got, buf[:n]...)
	}
	require.Equal(t, "abc", string(got))
	_, err = cli.Write([]byte("d"))
	require.NoError(t, err)
	s.await(t, be, fd)
	n, err := be.(evlib.IO).Read(fd, buf)
	require.NoError(t, err)
	require.Equal(t, "d", string(buf[:n]))
	require.Equal(t, 2, sameSocket(t, fd), "back in netpoll: its fd and netpoll's dup")
}

// readySink records what a backend reported, per fd.
type readySink struct {
	mu  sync.Mutex
	got map[int]evlib.Events
}

func (s *readySink) Ready(fd int, ev evlib.Events) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got[fd] |= ev
}

// await polls be until fd was reported, and takes the report.
func (s *readySink) await(t *testing.T, be evlib.Backend, fd int) evlib.Events {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // a hang guard
	for {
		s.mu.Lock()
		ev := s.got[fd]
		delete(s.got, fd)
		s.mu.Unlock()
		if ev != 0 {
			return ev
		}
		require.True(t, time.Now().Before(deadline), "fd %d never reported", fd)
		_, err := be.Poll(50 * time.Millisecond)
		require.NoError(t, err)
	}
}

// bareBackend is a netpoll backend with no core: the test is its core.
func bareBackend(t *testing.T) (evlib.Backend, *readySink) {
	t.Helper()
	s := &readySink{got: map[int]evlib.Events{}}
	be, err := evlib_netpoll.New(evlib.Config{Sink: s, Counters: &evlib.Counters{}, MaxFDs: 1 << 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return be, s
}
