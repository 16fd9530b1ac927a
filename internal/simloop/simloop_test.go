//go:build unix

package simloop_test

import (
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

type sink struct{ got []int }

func (s *sink) Ready(fd int, _ evlib.Events) { s.got = append(s.got, fd) }

// newBackend returns a sim backend on clk, and the sink it reports to.
func newBackend(t *testing.T, clk *simloop.Clock) (evlib.Backend, *sink) {
	t.Helper()
	s := &sink{}
	be, err := simloop.New(evlib.Config{
		Sink: s, Counters: &evlib.Counters{}, MaxFDs: 1 << 16, Foreign: clk,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return be, s
}

// pair returns a connected unix socket pair, closed with the test.
func pair(t *testing.T) (a, b int) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	t.Cleanup(func() {
		unix.Close(p[0])
		unix.Close(p[1])
	})
	return p[0], p[1]
}

// With nothing ready, a wait with a timeout takes no time: the clock jumps
// by exactly the timeout, and the backend reads the clock it was given.
func TestPollTimeoutAdvancesClock(t *testing.T) {
	clk := simloop.NewClock()
	be, s := newBackend(t, clk)
	a, _ := pair(t)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))

	n, err := be.Poll(1500 * time.Millisecond)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Empty(t, s.got)
	require.Equal(t, 1500*time.Millisecond, clk.Now())
	require.Equal(t, clk.Now(), be.(evlib.Clock).Now())

	_, err = be.Poll(0)
	require.NoError(t, err)
	require.Equal(t, 1500*time.Millisecond, clk.Now(), "Poll(0) moved the clock")
}

// A wait that finds an fd ready reports it and leaves the clock alone.
func TestPollReadyKeepsClock(t *testing.T) {
	clk := simloop.NewClock()
	be, s := newBackend(t, clk)
	a, peer := pair(t)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	_, err := unix.Write(peer, []byte("x"))
	require.NoError(t, err)

	n, err := be.Poll(time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, []int{a}, s.got)
	require.Zero(t, clk.Now())
}

// Without a timeout nothing time can do makes an fd ready: the wait is real
// and ends when one is.
func TestPollWithoutTimeoutWaitsForReal(t *testing.T) {
	clk := simloop.NewClock()
	be, s := newBackend(t, clk)
	a, peer := pair(t)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	go unix.Write(peer, []byte("x"))

	for len(s.got) == 0 {
		_, err := be.Poll(-1) // 0 without an fd: woken early (EINTR)
		require.NoError(t, err)
	}
	require.Equal(t, []int{a}, s.got)
	require.Zero(t, clk.Now())
}

// A deadline at the end of the clock's range (a timer set "forever") is
// never reached: that wait blocks like one without a timeout, rather than
// moving the clock to its end.
func TestPollUnreachableDeadlineWaitsForReal(t *testing.T) {
	clk := simloop.NewClock()
	clk.Advance(time.Second)
	be, s := newBackend(t, clk)
	a, peer := pair(t)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	go unix.Write(peer, []byte("x"))

	for len(s.got) == 0 {
		_, err := be.Poll(math.MaxInt64)
		require.NoError(t, err)
	}
	require.Equal(t, time.Second, clk.Now())
}

// Advance moves the clock forward only, and saturates.
func TestClockAdvance(t *testing.T) {
	clk := simloop.NewClock()
	require.Zero(t, clk.Now())
	clk.Advance(2 * time.Second)
	require.Equal(t, 2*time.Second, clk.Now())
	clk.Advance(-time.Second)
	clk.Advance(0)
	require.Equal(t, 2*time.Second, clk.Now(), "the clock went back")
	clk.Advance(math.MaxInt64)
	require.Equal(t, time.Duration(math.MaxInt64), clk.Now())
}

// Backends sharing a clock (the threads of one context) see one time; a
// wait never moves it back past another's jump.
func TestSharedClock(t *testing.T) {
	clk := simloop.NewClock()
	be1, _ := newBackend(t, clk)
	be2, _ := newBackend(t, clk)
	_, err := be1.Poll(3 * time.Second)
	require.NoError(t, err)
	_, err = be2.Poll(time.Second)
	require.NoError(t, err)
	require.Equal(t, 4*time.Second, clk.Now(), "be2's wait began at 3s")
	require.Equal(t, be1.(evlib.Clock).Now(), be2.(evlib.Clock).Now())
}

// Config.Foreign other than a *Clock is refused; none gives each backend a
// clock of its own, from 0.
func TestForeign(t *testing.T) {
	_, err := simloop.New(evlib.Config{Sink: &sink{}, Counters: &evlib.Counters{}, Foreign: 3})
	require.ErrorIs(t, err, evlib.ErrForeignUnsupported)

	be, err := simloop.New(evlib.Config{Sink: &sink{}, Counters: &evlib.Counters{}})
	require.NoError(t, err)
	defer be.Close()
	_, err = be.Poll(time.Minute)
	require.NoError(t, err)
	require.Equal(t, time.Minute, be.(evlib.Clock).Now())
	require.Equal(t, time.Minute, be.(*simloop.Backend).Clock().Now())
}
