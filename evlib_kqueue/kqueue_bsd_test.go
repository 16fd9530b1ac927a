//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package evlib_kqueue

import (
	"log/slog"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// These run the backend on the real kqueue; the rules they rely on are
// tested on any system with the model kernel in fake_test.go.

func newReal(t *testing.T, foreign any) (evlib.Backend, *recorder, *evlib.Counters) {
	t.Helper()
	sink, ctr := &recorder{}, &evlib.Counters{}
	be, err := New(evlib.Config{Sink: sink, Counters: ctr, Logger: slog.New(slog.DiscardHandler), Foreign: foreign})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return be, sink, ctr
}

func socketpair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	for _, fd := range fds {
		require.NoError(t, unix.SetNonblock(fd, true))
	}
	return fds[0], fds[1]
}

// pollFor polls until fd is reported, or fails after a few seconds.
func pollFor(t *testing.T, be evlib.Backend, sink *recorder, fd int) evlib.Events {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		_, err := be.Poll(time.Second)
		require.NoError(t, err)
		for _, r := range sink.take() {
			if r.fd == fd {
				return r.ev
			}
		}
	}
	t.Fatalf("fd %d never reported", fd)
	return 0
}

func TestKernelReadiness(t *testing.T) {
	be, sink, ctr := newReal(t, nil)
	a, b := socketpair(t)
	defer unix.Close(a)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	n, err := be.Poll(0)
	require.NoError(t, err)
	require.Zero(t, n)

	_, err = unix.Write(b, []byte("x"))
	require.NoError(t, err)
	require.Equal(t, evlib.Readable, pollFor(t, be, sink, a))
	var buf [8]byte
	_, err = unix.Read(a, buf[:])
	require.NoError(t, err)

	require.NoError(t, be.Modify(a, evlib.Readable|evlib.Writable))
	require.Equal(t, evlib.Writable, pollFor(t, be, sink, a))
	require.NoError(t, be.Modify(a, evlib.Readable))

	unix.Close(b)
	ev := pollFor(t, be, sink, a)
	require.Equal(t, evlib.Readable|evlib.Hangup, ev&(evlib.Readable|evlib.Hangup), "EV_EOF: %v", ev)
	require.NoError(t, be.Remove(a))
	require.NotZero(t, ctr.Waits.Load())
}

func TestKernelBadFD(t *testing.T) {
	be, _, _ := newReal(t, nil)
	a, b := socketpair(t)
	unix.Close(a)
	unix.Close(b)
	require.ErrorIs(t, be.Add(a, evlib.KindStream, evlib.Readable), evlib.ErrBadFD)
	require.ErrorIs(t, be.Add(-1, evlib.KindStream, evlib.Readable), evlib.ErrBadFD)
}

// Remove, close, reuse of the number and Add, all before the next kevent.
func TestKernelFDReuse(t *testing.T) {
	be, sink, _ := newReal(t, nil)
	a, b := socketpair(t)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable|evlib.Writable))
	require.Equal(t, evlib.Writable, pollFor(t, be, sink, a))
	require.NoError(t, be.Remove(a))
	unix.Close(a)
	unix.Close(b)

	c, d := socketpair(t)
	defer unix.Close(c)
	defer unix.Close(d)
	if c != a {
		t.Skipf("fd %d not reused (got %d)", a, c)
	}
	require.NoError(t, be.Add(c, evlib.KindStream, evlib.Readable))
	_, err := unix.Write(d, []byte("x"))
	require.NoError(t, err)
	require.Equal(t, evlib.Readable, pollFor(t, be, sink, c), "the new file, with read interest only")
}

// A removed fd that stays open: its knote is dropped when it fires.
func TestKernelLeftover(t *testing.T) {
	be, sink, _ := newReal(t, nil)
	a, b := socketpair(t)
	defer unix.Close(a)
	defer unix.Close(b)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Writable))
	require.Equal(t, evlib.Writable, pollFor(t, be, sink, a))
	require.NoError(t, be.Remove(a))
	for range 3 {
		_, err := be.Poll(10 * time.Millisecond)
		require.NoError(t, err)
		require.Empty(t, sink.take())
	}
}

// A pipe whose reader is gone: macOS refuses EVFILT_WRITE (EPIPE), reported
// as an Error; other systems report EV_EOF.
func TestKernelBrokenPipe(t *testing.T) {
	be, sink, _ := newReal(t, nil)
	var p [2]int
	require.NoError(t, unix.Pipe(p[:]))
	defer unix.Close(p[1])
	require.NoError(t, unix.SetNonblock(p[1], true))
	unix.Close(p[0])
	require.NoError(t, be.Add(p[1], evlib.KindFile, evlib.Writable))
	ev := pollFor(t, be, sink, p[1])
	require.NotZero(t, ev&(evlib.Hangup|evlib.Error), "%v", ev)
}

func TestKernelWake(t *testing.T) {
	be, sink, ctr := newReal(t, nil)
	w, ok := be.(evlib.Waker)
	require.Equal(t, haveUser, ok)
	if !ok {
		return
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		w.Wake()
	}()
	start := time.Now()
	n, err := be.Poll(10 * time.Second)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Empty(t, sink.take())
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, uint64(1), ctr.Wakes.Load())
	require.NoError(t, be.Close())
	require.NoError(t, w.Wake())
}

func TestKernelForeign(t *testing.T) {
	kq, err := unix.Kqueue()
	require.NoError(t, err)
	defer unix.Close(kq)
	be, sink, _ := newReal(t, kq)
	_, ok := be.(evlib.Waker)
	require.False(t, ok)
	_, err = be.Poll(0)
	require.ErrorIs(t, err, evlib.ErrAppDriven)

	a, b := socketpair(t)
	defer unix.Close(a)
	defer unix.Close(b)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	_, err = unix.Write(b, []byte("x"))
	require.NoError(t, err)

	// The application's loop gets the event; the backend took none.
	evs := make([]unix.Kevent_t, 4)
	ts := unix.NsecToTimespec(int64(5 * time.Second))
	n, err := unix.Kevent(kq, nil, evs, &ts)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, a, int(evs[0].Ident))
	require.Equal(t, unix.EVFILT_READ, int(evs[0].Filter))
	require.Empty(t, sink.take())

	require.NoError(t, be.Remove(a))
	zero := unix.Timespec{}
	n, err = unix.Kevent(kq, nil, evs, &zero)
	require.NoError(t, err)
	require.Zero(t, n, "Remove deleted the knote at once")

	c, d := socketpair(t)
	unix.Close(c)
	unix.Close(d)
	require.ErrorIs(t, be.Add(c, evlib.KindStream, evlib.Readable), evlib.ErrBadFD)

	require.NoError(t, be.Close())
	_, err = unix.FcntlInt(uintptr(kq), unix.F_GETFD, 0)
	require.NoError(t, err, "the application's kqueue stays open")
}

func TestKernelForeignNotAKqueue(t *testing.T) {
	a, b := socketpair(t)
	defer unix.Close(a)
	defer unix.Close(b)
	_, err := New(evlib.Config{Sink: &recorder{}, Counters: &evlib.Counters{}, Logger: slog.New(slog.DiscardHandler), Foreign: a})
	require.ErrorIs(t, err, evlib.ErrBadFD)
}

func TestKernelDescriptor(t *testing.T) {
	d, err := evlib.Lookup(Name)
	require.NoError(t, err)
	require.Equal(t, evlib.FlagKqueue, d.Flag)
	require.Equal(t, 20, d.Priority)
	require.Equal(t, haveUser, d.Caps&evlib.CapOwnWaker != 0)
	require.NotZero(t, d.Caps&evlib.CapForeignLoop)
}
