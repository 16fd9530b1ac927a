//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package selectbackend_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"example.com/selectbackend"
	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// The whole suite, in a process whose descriptors stay below FD_SETSIZE,
// as a program that uses select(2) must keep them: the suite's tests of
// far-off fds (Backend/TableGrowth, Core/HighFD, Core/Adopt) then use an
// fd near the descriptor limit, as they do on any machine with a low
// limit, instead of fd 4000, which select(2) cannot watch.
func TestConformance(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if low := rl; lowerTo(&low.Cur, selectbackend.SetSize) {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
		defer unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
		t.Logf("RLIMIT_NOFILE lowered from %d to FD_SETSIZE (%d) for the suite", rl.Cur, low.Cur)
	}
	conformance.Run(t, selectbackend.Name)
}

// lowerTo lowers a limit to n if it is higher. Rlimit's fields are int64
// on FreeBSD and DragonFly, uint64 elsewhere.
func lowerTo[T int64 | uint64](cur *T, n int) bool {
	if uint64(*cur) <= uint64(n) {
		return false
	}
	*cur = T(n)
	return true
}

type sink struct{ got map[int]evlib.Events }

func (s *sink) Ready(fd int, ev evlib.Events) { s.got[fd] = ev }

// socketPair returns a connected unix stream pair. The peer is closed at
// the end of the test, and so is the first fd unless adopted is true (the
// core closes what it adopted).
func socketPair(t *testing.T, adopted bool) (int, int) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[1]) })
	if !adopted {
		t.Cleanup(func() { unix.Close(p[0]) })
	}
	return p[0], p[1]
}

// dupAbove returns a duplicate of fd numbered at least min, closed at the
// end of the test.
func dupAbove(t *testing.T, fd, min int) int {
	t.Helper()
	hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, min)
	if err != nil {
		t.Fatalf("dup of fd %d to %d or above: %v (RLIMIT_NOFILE too low?)", fd, min, err)
	}
	t.Cleanup(func() { unix.Close(hi) })
	return hi
}

// An fd at or beyond FD_SETSIZE is refused with evlib.ErrBadFD, and the
// backend goes on watching what it watched, as it did; fd SetSize-1, the
// last one select(2) can watch, works.
func TestAddBeyondSetSize(t *testing.T) {
	s := &sink{got: map[int]evlib.Events{}}
	be, err := selectbackend.New(evlib.Config{Sink: s, Counters: &evlib.Counters{},
		MaxFDs: 1 << 16, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	a, aPeer := socketPair(t, false)
	if err := be.Add(a, evlib.KindStream, evlib.Readable); err != nil {
		t.Fatal(err)
	}
	b, bPeer := socketPair(t, false)
	hi := dupAbove(t, b, max(1100, selectbackend.SetSize))

	err = be.Add(hi, evlib.KindStream, evlib.Readable|evlib.Writable)
	if !errors.Is(err, evlib.ErrBadFD) {
		t.Fatalf("Add of fd %d: %v, want an error wrapping evlib.ErrBadFD", hi, err)
	}
	t.Logf("Add of fd %d: %v", hi, err)
	if err := be.Modify(hi, evlib.Readable); !errors.Is(err, evlib.ErrNotWatched) {
		t.Errorf("Modify of the refused fd %d: %v, want evlib.ErrNotWatched", hi, err)
	}
	if err := be.Remove(hi); err != nil {
		t.Errorf("Remove of the refused fd %d: %v", hi, err)
	}

	last := dupAbove(t, b, selectbackend.SetSize-1)
	if last != selectbackend.SetSize-1 {
		t.Skipf("fd %d is taken", selectbackend.SetSize-1)
	}
	if err := be.Add(last, evlib.KindStream, evlib.Readable); err != nil {
		t.Fatalf("Add of fd %d, the last below FD_SETSIZE: %v", last, err)
	}
	if err := be.Add(a, evlib.KindStream, evlib.Readable); !errors.Is(err, evlib.ErrExist) {
		t.Errorf("Add of fd %d again: %v, want evlib.ErrExist", a, err)
	}
	for _, p := range []int{aPeer, bPeer} {
		if _, err := unix.Write(p, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := be.Poll(time.Second); err != nil {
		t.Fatal(err)
	}
	want := map[int]evlib.Events{a: evlib.Readable, last: evlib.Readable}
	if len(s.got) != len(want) || s.got[a] != want[a] || s.got[last] != want[last] {
		t.Fatalf("Poll reported %v, want %v (fd %d has data, so has fd %d)", s.got, want, a, last)
	}
}

// Through the core: AdoptFD of an fd beyond FD_SETSIZE fails with an error
// that says why (evlib.ErrBadFD), leaves the fd to the caller, and the
// context serves its other connections as before.
func TestAdoptBeyondSetSize(t *testing.T) {
	ctx, err := core.New(core.Info{EventLib: selectbackend.Name, Protocols: []core.Protocol{{
		Name: "echo", Callback: echo,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ctx.Destroy(); <-ctx.Done() }()
	a, aPeer := socketPair(t, true)
	hi := dupAbove(t, a, max(1100, selectbackend.SetSize))
	_, err = ctx.AdoptFD(hi, "echo")
	if !errors.Is(err, evlib.ErrBadFD) {
		t.Fatalf("AdoptFD of fd %d: %v, want an error wrapping evlib.ErrBadFD", hi, err)
	}
	t.Logf("AdoptFD of fd %d: %v", hi, err)
	if _, err := unix.FcntlInt(uintptr(hi), unix.F_GETFD, 0); err != nil {
		t.Fatalf("fd %d, refused, was closed: %v", hi, err)
	}

	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctx.AdoptFD(a, "echo"); err != nil {
		unix.Close(a)
		t.Fatal(err)
	}
	go ctx.Run(context.Background())
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, rw := range []io.ReadWriter{c, fdRW(aPeer)} {
		if _, err := rw.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(rw, got); err != nil || string(got) != "ping" {
			t.Fatalf("echo: %q, %v", got, err)
		}
	}
}

// fdRW reads and writes a blocking descriptor.
type fdRW int

func (f fdRW) Read(p []byte) (int, error) {
	n, err := unix.Read(int(f), p)
	return max(n, 0), err
}

func (f fdRW) Write(p []byte) (int, error) {
	n, err := unix.Write(int(f), p)
	return max(n, 0), err
}
