//go:build linux

package evlib_gnet_test

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// passLog is a Passer that logs what the backend hands it: an fd for each
// Ready, -1 for each Pass. Pass number stop (from 1) stops the loop; each
// Pass first runs then, if set, with its number.
type passLog struct {
	seq    []int
	passes int
	stop   int
	then   func(pass int)
}

func (l *passLog) Ready(fd int, _ evlib.Events) { l.seq = append(l.seq, fd) }

func (l *passLog) Pass() (time.Duration, bool) {
	l.seq = append(l.seq, -1)
	l.passes++
	if l.then != nil {
		l.then(l.passes)
	}
	return -1, l.passes == l.stop
}

func newLoggedBackend(t *testing.T, log evlib.Sink, foreign any) evlib.Backend {
	t.Helper()
	be, err := evlib_gnet.New(evlib.Config{Sink: log, Counters: &evlib.Counters{}, MaxFDs: 1 << 16, Foreign: foreign,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return be
}

// addPairs adds the first ends of n socket pairs to be, readable, and
// returns both ends, the added ones in increasing fd order.
func addPairs(t *testing.T, be evlib.Backend, n int) (fds, peers []int) {
	t.Helper()
	fds, peers = make([]int, n), make([]int, n)
	for i := range fds {
		fds[i], peers[i] = pair(t)
		require.NoError(t, be.Add(fds[i], evlib.KindStream, evlib.Readable))
	}
	require.True(t, slices.IsSorted(fds))
	return fds, peers
}

// send makes the fds of peers[i] readable, for each i in order.
func send(t *testing.T, peers []int, order ...int) {
	t.Helper()
	for _, i := range order {
		_, err := unix.Write(peers[i], []byte("x"))
		require.NoError(t, err)
	}
}

// In Loop, gnet's Polling hands over a batch one fd at a time, in the
// order the fds became ready; the core gets the whole batch in fd order,
// as from the epoll backend, and one pass after it.
func TestLoopBatchInFDOrder(t *testing.T) {
	log := &passLog{stop: 2}
	be := newLoggedBackend(t, log, nil)
	fds, peers := addPairs(t, be, 6)
	send(t, peers, 5, 4, 3, 2, 1, 0) // the highest fd ready first
	require.NoError(t, be.(evlib.Looper).Loop(log))
	want := append(append([]int{-1}, fds...), -1)
	require.Equal(t, want, log.seq, "Loop's first pass, the batch in fd order, one pass")
}

// After a batch of one fd, where holding buys nothing, the next fd events
// go to the core at once, each followed by a pass.
func TestLoopBatchOfOneGoesDirect(t *testing.T) {
	log := &passLog{stop: 4}
	be := newLoggedBackend(t, log, nil)
	fds, peers := addPairs(t, be, 3)
	log.then = func(pass int) {
		if pass != 2 {
			return
		}
		// After the batch of one: take its input, make the other two
		// ready, the higher first.
		_, err := unix.Read(fds[0], make([]byte, 8))
		require.NoError(t, err)
		send(t, peers, 2, 1)
	}
	send(t, peers, 0)
	require.NoError(t, be.(evlib.Looper).Loop(log))
	want := []int{-1, fds[0], -1, fds[2], -1, fds[1], -1}
	require.Equal(t, want, log.seq, "the batch of one, then each fd with its own pass")
}

// serviceLog is a foreign poller's driver that logs what the backend
// hands it: an fd for each ServiceFD, -1 for each Service. onFD, if set,
// sees each ServiceFD first.
type serviceLog struct {
	seq  []int
	onFD func(pfd *unix.PollFd)
}

func (l *serviceLog) Ready(int, evlib.Events) {}

func (l *serviceLog) ServiceFD(pfd *unix.PollFd) error {
	if l.onFD != nil {
		l.onFD(pfd)
	}
	l.seq = append(l.seq, int(pfd.Fd))
	pfd.Revents = 0
	return nil
}

func (l *serviceLog) Service(time.Duration) error {
	l.seq = append(l.seq, -1)
	return nil
}

func (l *serviceLog) ServiceAdjustTimeout(time.Duration) time.Duration { return -1 }

// On the application's poller too the core gets a batch in fd order, and
// the service that follows a wait once after it.
func TestForeignBatchInFDOrder(t *testing.T) {
	p, err := netpoll.OpenPoller()
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	log := &serviceLog{}
	be := newLoggedBackend(t, log, p)
	fds, peers := addPairs(t, be, 6)
	send(t, peers, 5, 4, 3, 2, 1, 0)
	host := evlib_gnet.Dispatcher(p)
	err = p.Polling(func(fd int, ev netpoll.IOEvent, flags netpoll.IOFlags) error {
		host.Dispatch(fd, ev, flags)
		if slices.Contains(log.seq, -1) {
			return gerrors.ErrEngineShutdown
		}
		return nil
	})
	require.ErrorIs(t, err, gerrors.ErrEngineShutdown)
	want := append(fds, -1)
	require.Equal(t, want, log.seq, "the batch in fd order, one service")
}
