//go:build unix

package conformance

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// report is one Sink.Ready call.
type report struct {
	fd int
	ev evlib.Events
}

// sink records what a backend reports. hook, if set, runs inside Ready,
// where the core would run its handling.
type sink struct {
	mu   sync.Mutex
	got  []report
	hook func(fd int, ev evlib.Events)
}

func (s *sink) Ready(fd int, ev evlib.Events) {
	s.mu.Lock()
	s.got = append(s.got, report{fd, ev})
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		hook(fd, ev)
	}
}

func (s *sink) take() []report {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.got
	s.got = nil
	return r
}

// beHarness is a backend instance driven directly by a test.
type beHarness struct {
	t    *testing.T
	be   evlib.Backend
	sink *sink
	ctr  *evlib.Counters
	app  bool // app-driven: Poll never waits
}

func (s *suite) newBackend(t *testing.T) *beHarness {
	t.Helper()
	b := &beHarness{t: t, sink: &sink{}, ctr: &evlib.Counters{}, app: s.desc.Caps&evlib.CapAppDriven != 0}
	be, err := s.desc.New(evlib.Config{
		Sink: b.sink, Counters: b.ctr, Thread: 0, MaxFDs: 1 << 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err, "creating backend %q", s.name)
	require.NotNil(t, be)
	b.be = be
	t.Cleanup(func() { be.Close() })
	return b
}

// with returns a copy of b bound to t, a subtest of the test b was made
// for: its helpers then fail t, not the parent (FailNow must be called on
// the goroutine of the test it fails). The backend stays b's.
func (b *beHarness) with(t *testing.T) *beHarness {
	c := *b
	c.t = t
	return &c
}

// watchReadable makes a socket pair and watches its first end for
// Readable; both ends are closed when the test ends.
func (b *beHarness) watchReadable() (a, peer int) {
	b.t.Helper()
	a, peer = nonblockPair(b.t)
	b.t.Cleanup(func() {
		unix.Close(a)
		unix.Close(peer)
	})
	require.NoError(b.t, b.be.Add(a, evlib.KindStream, evlib.Readable))
	return a, peer
}

// needPoll skips a test that needs Poll on an app-driven backend.
func (b *beHarness) needPoll() {
	b.t.Helper()
	if b.app {
		_, err := b.be.Poll(0)
		require.ErrorIs(b.t, err, evlib.ErrAppDriven, "an app-driven backend's Poll must return ErrAppDriven")
		b.t.Skip("conformance: the backend is app-driven (evlib.CapAppDriven): it never polls, the application's loop reports readiness")
	}
}

// poll calls Poll once and returns what it reported, checking that the
// count it returned matches and that no fd was reported twice in one call
// (checklist 1: exactly one dispatch per ready fd and wait).
func (b *beHarness) poll(timeout time.Duration) []report {
	b.t.Helper()
	b.sink.take()
	// A Poll that never returns would hold the test until go test's own
	// timeout, whose panic says nothing of why: say it here. (Nothing can
	// end a call on the test's goroutine; the guard ends the process.)
	name, limit := b.t.Name(), hang+max(timeout, 0)
	guard := time.AfterFunc(limit, func() {
		panic(fmt.Sprintf("conformance: %s: Poll(%v) did not return within %v: a Poll must return once its timeout passed, or when an fd it watches is ready", name, timeout, limit))
	})
	n, err := b.be.Poll(timeout)
	guard.Stop()
	require.NoError(b.t, err, "Poll(%v)", timeout)
	got := b.sink.take()
	require.Equal(b.t, len(got), n, "Poll returned a count other than the number of fds it reported: %v", got)
	seen := map[int]bool{}
	for _, r := range got {
		require.False(b.t, seen[r.fd], "fd %d reported twice by one Poll: %v", r.fd, got)
		seen[r.fd] = true
		require.NotZero(b.t, r.ev, "fd %d reported with no events: a report holds at least one event, and Hangup and Error are reported whatever the interest (a backend that masks what the kernel said with the interest loses them; see evlib.Events)", r.fd)
	}
	return got
}

func evFor(got []report, fd int) (evlib.Events, bool) {
	for _, r := range got {
		if r.fd == fd {
			return r.ev, true
		}
	}
	return 0, false
}

// pollFor polls until fd is reported with one of the events in want.
func (b *beHarness) pollFor(fd int, want evlib.Events) evlib.Events {
	b.t.Helper()
	deadline := time.Now().Add(hang)
	for time.Now().Before(deadline) {
		if ev, ok := evFor(b.poll(100*time.Millisecond), fd); ok && ev&want != 0 {
			return ev
		}
	}
	hint := ""
	if want&^(evlib.Hangup|evlib.Error) == 0 {
		hint = ": a backend adds Hangup and Error to its report of an fd whenever they hold, also where its mechanism says only readable or writable (see evlib.Hangup)"
	}
	b.t.Fatalf("conformance: fd %d never reported with %v (hang guard %v)%s", fd, want, hang, hint)
	return 0
}

// notReported polls without blocking and fails if fd is reported.
func (b *beHarness) notReported(fd int, why string) {
	b.t.Helper()
	if ev, ok := evFor(b.poll(0), fd); ok {
		b.t.Fatalf("conformance: fd %d reported %v, want nothing: %s", fd, ev, why)
	}
}

// read reads fd the way the core would: through the backend's IO if it
// has one, else read(2).
func (b *beHarness) read(fd int, p []byte) (int, error) {
	if io, ok := b.be.(evlib.IO); ok {
		return io.Read(fd, p)
	}
	n, err := unix.Read(fd, p)
	return max(n, 0), err
}

// readEnd polls until fd is readable or hung up and reads it, which must
// return end of stream: its peer is gone and its input all read.
func (b *beHarness) readEnd(fd int) {
	b.t.Helper()
	b.pollFor(fd, evlib.Readable|evlib.Hangup)
	n, err := b.read(fd, make([]byte, 16))
	require.NoError(b.t, err)
	require.Zero(b.t, n, "read after the peer's end must return end of stream")
}

func (s *suite) backendTests() []subtest {
	return []subtest{
		{"Capabilities", s.testBackendCaps},
		{"ForeignRejected", s.testBackendForeign},
		{"AddModifyRemove", s.testBackendAddModifyRemove},
		{"Readable", s.testBackendReadable},
		{"InterestBits", s.testBackendInterestBits},
		{"InterestFromAdd", s.testBackendInterestFromAdd},
		{"WritableTracksBuffer", s.testBackendWritableTracksBuffer},
		{"HangupOnReset", s.testBackendHangupOnReset},
		{"HangupWithoutInterest", s.testBackendHangupNoInterest},
		{"ReadAfterFIN", s.testBackendReadAfterFIN},
		{"AddAccepted", s.testBackendAddAccepted},
		{"PollDoesNotBlock", s.testBackendPollZero},
		{"PollTimeout", s.testBackendPollTimeout},
		{"PollWakesOnReadiness", s.testBackendPollWakes},
		{"PollCountsWaits", s.testBackendPollCountsWaits},
		{"PollSignalled", s.testBackendPollSignalled},
		{"ChangesInsideReady", s.testBackendChangesInsideReady},
		{"TableGrowth", s.testBackendTableGrowth},
		{"ManyReady", s.testBackendManyReady},
		{"Waker", s.testBackendWaker},
		{"WakeFD", s.testBackendWakeFD},
		{"Files", s.testBackendFiles},
		{"PipeReaderGone", s.testBackendPipeReaderGone},
		{"Close", s.testBackendClose},
	}
}

// Declared capabilities must match the interfaces the backend implements.
func (s *suite) testBackendCaps(t *testing.T) {
	b := s.newBackend(t)
	caps := s.desc.Caps
	_, hasIO := b.be.(evlib.IO)
	_, hasWaker := b.be.(evlib.Waker)
	require.Equal(t, caps&evlib.CapBufferedRx != 0, hasIO,
		"CapBufferedRx is declared iff the backend implements evlib.IO (caps %v)", caps)
	require.Equal(t, caps&evlib.CapOwnWaker != 0, hasWaker,
		"CapOwnWaker is declared iff the backend implements evlib.Waker (caps %v)", caps)
	require.False(t, caps&evlib.CapReadiness != 0 && caps&evlib.CapBufferedRx != 0,
		"a backend is either a readiness or a buffered-rx backend, not both (caps %v)", caps)
	require.NotZero(t, caps&(evlib.CapReadiness|evlib.CapBufferedRx|evlib.CapAppDriven),
		"a backend declares CapReadiness, CapBufferedRx or CapAppDriven (caps %v)", caps)
}

// A foreign loop the backend cannot use is refused with
// ErrForeignUnsupported, never ignored.
func (s *suite) testBackendForeign(t *testing.T) {
	type notALoop struct{ _ int }
	be, err := s.desc.New(evlib.Config{
		Sink: &sink{}, Counters: &evlib.Counters{}, MaxFDs: 1 << 16, Foreign: notALoop{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err == nil {
		be.Close()
	}
	require.ErrorIs(t, err, evlib.ErrForeignUnsupported, "New with a Config.Foreign of a type no backend knows")
}

// Checklist 4: Add, Modify and Remove are idempotent in effect, and their
// errors wrap the evlib sentinels.
func (s *suite) testBackendAddModifyRemove(t *testing.T) {
	b := s.newBackend(t)
	be := b.be
	a, peer := nonblockPair(t)
	defer unix.Close(a)
	defer unix.Close(peer)

	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	require.ErrorIs(t, be.Add(a, evlib.KindStream, evlib.Readable), evlib.ErrExist, "Add of a watched fd")
	require.ErrorIs(t, be.Add(a, evlib.KindStream, evlib.Writable), evlib.ErrExist, "Add of a watched fd with another interest")

	c := b.ctr.InterestChanges.Load()
	require.NoError(t, be.Modify(a, evlib.Readable))
	require.Equal(t, c, b.ctr.InterestChanges.Load(), "Modify to the current interest must make no system call")
	require.NoError(t, be.Modify(a, evlib.Readable|evlib.Writable))
	c = b.ctr.InterestChanges.Load()
	require.NoError(t, be.Modify(a, evlib.Readable|evlib.Writable))
	require.NoError(t, be.Modify(a, evlib.Writable|evlib.Readable))
	require.Equal(t, c, b.ctr.InterestChanges.Load(), "Modify to the current interest must make no system call")
	require.NoError(t, be.Modify(a, evlib.Readable))

	require.NoError(t, be.Remove(a))
	require.NoError(t, be.Remove(a), "Remove of an fd no longer watched")
	require.NoError(t, be.Remove(peer), "Remove of an fd never watched")
	require.NoError(t, be.Remove(-1), "Remove of a negative fd")
	require.ErrorIs(t, be.Modify(a, evlib.Readable), evlib.ErrNotWatched, "Modify of an fd not watched")

	require.ErrorIs(t, be.Add(-1, evlib.KindStream, evlib.Readable), evlib.ErrBadFD, "Add of a negative fd")
	require.ErrorIs(t, be.Add(math.MaxInt, evlib.KindStream, evlib.Readable), evlib.ErrBadFD, "Add of an fd beyond a C int")
	// First a number that is not open, whose table still fits in memory:
	// a backend that sizes its fd table by the number before it asks the
	// kernel fails here, with a message, instead of at math.MaxInt32 below,
	// where a table it also fills in (-1 for "not watched") is gigabytes
	// of memory touched and the test dies by the host's OOM killer, saying
	// nothing.
	if probe := 1 << 20; !fdOpen(probe) {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		err := be.Add(probe, evlib.KindStream, evlib.Readable)
		runtime.ReadMemStats(&m1)
		require.ErrorIs(t, err, evlib.ErrBadFD, "Add of fd %d, which is not open: Add asks the kernel first (fcntl F_GETFD) and grows no table for it", probe)
		require.Less(t, m1.TotalAlloc-m0.TotalAlloc, uint64(1<<20),
			"Add of fd %d, which is not open, allocated for a table that size: Add must ask the kernel (fcntl F_GETFD) before it grows a table, or at fd %d (tested next) it takes gigabytes", probe, math.MaxInt32)
	}
	// No process can have this one open. A backend that sized its fd
	// table by the number before asking the kernel would allocate
	// gigabytes here (untouched, so only the allocator's count shows
	// it), or on a 32-bit system index past its table.
	for _, ev := range []evlib.Events{evlib.Readable, 0} {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		err := be.Add(math.MaxInt32, evlib.KindStream, ev)
		runtime.ReadMemStats(&m1)
		require.ErrorIs(t, err, evlib.ErrBadFD, "Add of the largest C int, which no fd can be (interest %v)", ev)
		require.Less(t, m1.TotalAlloc-m0.TotalAlloc, uint64(1<<20), "Add of fd %d allocated for a table that size (interest %v)", math.MaxInt32, ev)
	}
	if alias, ok := aliasOf(a); ok {
		// Not taken for a, which the re-Add below then finds free.
		require.ErrorIs(t, be.Add(alias, evlib.KindStream, evlib.Readable), evlib.ErrBadFD,
			"Add of %d, which a system call would truncate to the open fd %d", alias, a)
	}
	bad := closedFD(t)
	require.ErrorIs(t, be.Add(bad, evlib.KindStream, evlib.Readable), evlib.ErrBadFD, "Add of a closed fd %d", bad)
	require.ErrorIs(t, be.Modify(bad, evlib.Readable), evlib.ErrNotWatched, "Modify of a closed fd")

	// Watched again after all that, the fd is registered once: one report
	// per Poll, and none once removed.
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	if b.app {
		return
	}
	_, err := unix.Write(peer, []byte("x"))
	require.NoError(t, err)
	b.pollFor(a, evlib.Readable)
	b.pollFor(a, evlib.Readable) // level-triggered: again, once
	require.NoError(t, be.Remove(a))
	b.notReported(a, "removed fd with unread data")
}

// Checklist 1: a socket with data is reported Readable, level-triggered,
// with nothing outside its interest.
func (s *suite) testBackendReadable(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	a, peer := b.watchReadable()
	b.notReported(a, "idle socket watched for Readable only")

	_, err := unix.Write(peer, []byte("ping"))
	require.NoError(t, err)
	ev := b.pollFor(a, evlib.Readable)
	require.Equal(t, evlib.Readable, ev, "socket with data, interest Readable")
	ev = b.pollFor(a, evlib.Readable)
	require.Equal(t, evlib.Readable, ev, "unread data must be reported again (level-triggered)")

	p := make([]byte, 16)
	n, err := b.read(a, p)
	require.NoError(t, err)
	require.Equal(t, "ping", string(p[:n]))
	b.notReported(a, "all data was read")
}

// Checklist 2 and 5: Readable and Writable are independent interest bits,
// and nothing is reported outside the interest.
func (s *suite) testBackendInterestBits(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	be := b.be
	a, peer := nonblockPair(t)
	defer unix.Close(a)
	defer unix.Close(peer)
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable))
	b.notReported(a, "writable socket without Writable interest")

	require.NoError(t, be.Modify(a, evlib.Readable|evlib.Writable))
	require.Equal(t, evlib.Writable, b.pollFor(a, evlib.Writable), "idle socket, interest R|W")

	_, err := unix.Write(peer, []byte("data"))
	require.NoError(t, err)
	require.Equal(t, evlib.Readable|evlib.Writable, b.pollFor(a, evlib.Readable), "socket with data, interest R|W")

	require.NoError(t, be.Modify(a, evlib.Writable))
	require.Equal(t, evlib.Writable, b.pollFor(a, evlib.Writable), "socket with data, interest Writable only")

	require.NoError(t, be.Modify(a, evlib.Readable))
	require.Equal(t, evlib.Readable, b.pollFor(a, evlib.Readable), "socket with data, interest Readable only")

	require.NoError(t, be.Modify(a, 0))
	b.notReported(a, "interest 0 on a readable and writable socket")

	require.NoError(t, be.Modify(a, evlib.Readable|evlib.Writable))
	require.Equal(t, evlib.Readable|evlib.Writable, b.pollFor(a, evlib.Readable))
	require.NoError(t, be.Remove(a))
}

// Checklist 2, 4 and 5: the interest Add is given is the fd's interest,
// whatever it is, and the first Modify changes it from there. The core
// adds most fds with Readable and changes them later, but a connecting
// client starts with Writable, and a paused one with nothing: a backend
// that registered another interest with the kernel than it noted for
// itself would report outside the interest, or skip the first Modify as
// one to the interest it believes current.
func (s *suite) testBackendInterestFromAdd(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	interests := []evlib.Events{0, evlib.Readable, evlib.Writable, evlib.Readable | evlib.Writable}
	expect := func(fd int, ev evlib.Events, what string) {
		t.Helper()
		if ev == 0 {
			b.notReported(fd, what)
			return
		}
		// Each report within the interest, all of it reported in the
		// end: a buffered-rx backend may report Writable before its
		// library has read the data.
		var seen evlib.Events
		deadline := time.Now().Add(hang)
		for seen != ev && time.Now().Before(deadline) {
			if got, ok := evFor(b.poll(100*time.Millisecond), fd); ok {
				require.Zero(t, got&^ev, "%s: a socket with data, writable, reported %v", what, got)
				seen |= got
			}
		}
		require.Equal(t, ev, seen, "%s: a socket with data, writable", what)
	}
	for _, add := range interests {
		for _, mod := range interests {
			if mod == add {
				continue
			}
			func() {
				a, peer := nonblockPair(t)
				defer unix.Close(a)
				defer unix.Close(peer)
				_, err := unix.Write(peer, []byte("data"))
				require.NoError(t, err)
				require.NoError(t, b.be.Add(a, evlib.KindStream, add))
				defer b.be.Remove(a)
				expect(a, add, fmt.Sprintf("added with interest %v", add))
				require.NoError(t, b.be.Modify(a, mod))
				expect(a, mod, fmt.Sprintf("added with interest %v, then modified to %v", add, mod))
				require.NoError(t, b.be.Remove(a))
			}()
		}
	}
}

// Writable follows the kernel: a full socket is not writable, a drained
// one is again.
func (s *suite) testBackendWritableTracksBuffer(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	a, peer := nonblockPair(t)
	defer unix.Close(a)
	defer unix.Close(peer)
	chunk := make([]byte, 64<<10)
	for total := 0; ; {
		n, err := unix.Write(a, chunk)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		require.NoError(t, err)
		total += n
		require.Less(t, total, 256<<20, "a socket pair took 256 MB without blocking")
	}
	require.NoError(t, b.be.Add(a, evlib.KindStream, evlib.Readable|evlib.Writable))
	b.notReported(a, "full socket, nothing to read")
	for {
		_, err := unix.Read(peer, chunk)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		require.NoError(t, err)
	}
	require.Equal(t, evlib.Writable, b.pollFor(a, evlib.Writable), "drained socket")
	require.NoError(t, b.be.Remove(a))
}

// tcpServerFD returns the server end of a loopback TCP connection as a raw
// non-blocking fd the test owns, and the client end.
func tcpServerFD(t *testing.T) (int, interface {
	SetLinger(int) error
	Close() error
	CloseWrite() error
	Write([]byte) (int, error)
}) {
	srv, cli := tcpPair(t)
	fd := dupFD(t, srv)
	srv.Close()
	t.Cleanup(func() { unix.Close(fd) })
	return fd, cli
}

// A connection reset by the peer (SO_LINGER 0 close) is reported with
// Hangup and/or Error.
func (s *suite) testBackendHangupOnReset(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	fd, cli := tcpServerFD(t)
	require.NoError(t, b.be.Add(fd, evlib.KindStream, evlib.Readable))
	require.NoError(t, cli.SetLinger(0))
	require.NoError(t, cli.Close())
	ev := b.pollFor(fd, evlib.Hangup|evlib.Error)
	require.NotZero(t, ev&(evlib.Hangup|evlib.Error), "reset connection reported as %v", ev)
	require.NoError(t, b.be.Remove(fd))
}

// Hangup and Error are reported whatever the interest where the backend
// declares evlib.CapHangupWithoutInterest, and never where it does not: the
// core keeps a half-open connection watched with interest 0 for its
// peer's reset only where it is declared. "AfterEnd" is that connection:
// the peer's orderly end read to end of stream, interest 0 (a backend may
// report the end itself once, then nothing), then the peer's reset, which
// is reported if and only if the capability is declared. "Reset" has
// interest 0 from Add and the reset alone: a declaring backend reports it
// too (a paused connection learns so that its peer went away).
func (s *suite) testBackendHangupNoInterest(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	declared := s.desc.Caps&evlib.CapHangupWithoutInterest != 0
	// resetSeen waits until the kernel has fd's reset, asking it directly.
	resetSeen := func(t *testing.T, fd int) {
		waitUntil(t, "the reset to reach the socket", func() bool {
			p := []unix.PollFd{{Fd: int32(fd), Events: 0}}
			n, _ := unix.Poll(p, 100)
			return n > 0 && p[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		})
	}
	reported := func(t *testing.T, fd int) {
		t.Helper()
		ev := b.with(t).pollFor(fd, evlib.Hangup|evlib.Error)
		require.Zero(t, ev&(evlib.Readable|evlib.Writable), "interest 0, yet reported %v", ev)
	}
	t.Run("AfterEnd", func(t *testing.T) {
		b := b.with(t)
		fd, cli := tcpServerFD(t)
		require.NoError(t, b.be.Add(fd, evlib.KindStream, evlib.Readable))
		_, err := cli.Write([]byte("request"))
		require.NoError(t, err)
		require.NoError(t, cli.CloseWrite())
		got := 0
		for ended := false; !ended; {
			b.pollFor(fd, evlib.Readable|evlib.Hangup)
			n, err := b.read(fd, make([]byte, 64))
			switch {
			case n > 0:
				got += n
			case err == nil:
				ended = true
			case !errors.Is(err, unix.EAGAIN) && !errors.Is(err, evlib.ErrWouldBlock):
				t.Fatalf("conformance: read before the peer's end: %v", err)
			}
		}
		require.Equal(t, len("request"), got, "bytes before end of stream")
		require.NoError(t, b.be.Modify(fd, 0))
		b.poll(0) // the end may be reported once more, without Readable
		if declared {
			b.notReported(fd, "interest 0, the peer's orderly end read and reported")
		}
		require.NoError(t, cli.SetLinger(0))
		require.NoError(t, cli.Close())
		resetSeen(t, fd)
		if declared {
			reported(t, fd)
		} else {
			for range 3 {
				ev, ok := evFor(b.poll(20*time.Millisecond), fd)
				require.False(t, ok, "conformance: the reset of an fd with interest 0 after its end was reported (%v), but evlib.CapHangupWithoutInterest is not declared", ev)
			}
		}
		require.NoError(t, b.be.Remove(fd))
	})
	if !declared {
		return
	}
	t.Run("Reset", func(t *testing.T) {
		b := b.with(t)
		fd, cli := tcpServerFD(t)
		require.NoError(t, b.be.Add(fd, evlib.KindStream, 0))
		require.NoError(t, cli.SetLinger(0))
		require.NoError(t, cli.Close())
		resetSeen(t, fd)
		reported(t, fd)
		require.NoError(t, b.be.Remove(fd))
	})
}

// Checklist 9 (backend side): after the peer's FIN the socket is readable
// and a read returns end of stream, on unix and TCP sockets.
func (s *suite) testBackendReadAfterFIN(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	t.Run("unix", func(t *testing.T) {
		b := b.with(t)
		a, peer := nonblockPair(t)
		defer unix.Close(a)
		require.NoError(t, b.be.Add(a, evlib.KindStream, evlib.Readable))
		_, err := unix.Write(peer, []byte("bye"))
		require.NoError(t, err)
		require.NoError(t, unix.Close(peer))
		b.pollFor(a, evlib.Readable)
		p := make([]byte, 16)
		n, err := b.read(a, p)
		require.NoError(t, err)
		require.Equal(t, "bye", string(p[:n]))
		b.readEnd(a)
		require.NoError(t, b.be.Remove(a))
	})
	t.Run("tcp", func(t *testing.T) {
		b := b.with(t)
		fd, cli := tcpServerFD(t)
		require.NoError(t, b.be.Add(fd, evlib.KindStream, evlib.Readable))
		require.NoError(t, cli.Close())
		b.readEnd(fd)
		require.NoError(t, b.be.Remove(fd))
	})
}

// A backend that adds the streams the core accepts its own way
// (evlib.AcceptedAdder) serves them as Add does: input that came before
// the add and after it, the peer's end of stream, its reset; and refuses a
// bad or watched fd alike. The streams are accepted TCP connections nobody
// read, which is what the core promises.
func (s *suite) testBackendAddAccepted(t *testing.T) {
	b := s.newBackend(t)
	aa, ok := b.be.(evlib.AcceptedAdder)
	if !ok {
		t.Skip("conformance: the backend adds accepted streams with Add (it is no evlib.AcceptedAdder)")
	}
	b.needPoll()
	readAll := func(t *testing.T, fd int, want string) {
		t.Helper()
		b := b.with(t)
		var got []byte
		for len(got) < len(want) {
			b.pollFor(fd, evlib.Readable)
			p := make([]byte, 64)
			n, err := b.read(fd, p)
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, evlib.ErrWouldBlock) {
				require.NoError(t, err)
			}
			got = append(got, p[:n]...)
		}
		require.Equal(t, want, string(got))
	}
	t.Run("EndOfStream", func(t *testing.T) {
		b := b.with(t)
		fd, cli := tcpServerFD(t)
		_, err := cli.Write([]byte("before"))
		require.NoError(t, err)
		require.NoError(t, aa.AddAccepted(fd, evlib.Readable))
		require.ErrorIs(t, aa.AddAccepted(fd, evlib.Readable), evlib.ErrExist, "AddAccepted of a watched fd")
		require.ErrorIs(t, b.be.Add(fd, evlib.KindStream, evlib.Readable), evlib.ErrExist, "Add of an fd AddAccepted watches")
		readAll(t, fd, "before")
		_, err = cli.Write([]byte("after"))
		require.NoError(t, err)
		readAll(t, fd, "after")
		require.NoError(t, cli.CloseWrite())
		b.readEnd(fd)
		require.NoError(t, b.be.Remove(fd))
	})
	t.Run("Reset", func(t *testing.T) {
		b := b.with(t)
		fd, cli := tcpServerFD(t)
		require.NoError(t, aa.AddAccepted(fd, evlib.Readable))
		require.NoError(t, cli.SetLinger(0))
		require.NoError(t, cli.Close())
		b.pollFor(fd, evlib.Readable|evlib.Hangup|evlib.Error)
		_, err := b.read(fd, make([]byte, 16))
		require.ErrorIs(t, err, unix.ECONNRESET, "a read after the peer's reset")
		require.NoError(t, b.be.Remove(fd))
	})
	t.Run("BadFD", func(t *testing.T) {
		b := b.with(t)
		require.ErrorIs(t, aa.AddAccepted(-1, evlib.Readable), evlib.ErrBadFD, "AddAccepted of a negative fd")
		a, _ := b.watchReadable()
		require.ErrorIs(t, aa.AddAccepted(a, evlib.Readable), evlib.ErrExist, "AddAccepted of an fd Add watches")
		require.NoError(t, b.be.Remove(a))
	})
}

// Poll(0) never blocks, with or without watched fds.
func (s *suite) testBackendPollZero(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	var got []report
	goWithin(t, "Poll(0) with no fds", func() { got = b.poll(0) })
	require.Empty(t, got)
	a, _ := b.watchReadable()
	for range 3 {
		goWithin(t, "Poll(0) with an idle fd", func() { got = b.poll(0) })
		require.Empty(t, got)
	}
	require.NoError(t, b.be.Remove(a))
}

// Poll with a timeout and nothing ready returns, reporting nothing. (It
// may return early, say on EINTR; the suite asserts no duration.)
func (s *suite) testBackendPollTimeout(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	a, _ := b.watchReadable()
	for _, d := range []time.Duration{time.Microsecond, 20 * time.Millisecond} {
		var got []report
		goWithin(t, fmt.Sprintf("Poll(%v) with nothing ready", d), func() { got = b.poll(d) })
		require.Empty(t, got, "Poll(%v) with nothing ready", d)
	}
	require.NoError(t, b.be.Remove(a))
}

// A Poll blocked without a timeout returns when a watched fd becomes ready.
func (s *suite) testBackendPollWakes(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	a, peer := b.watchReadable()
	type res struct {
		n   int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		for {
			n, err := b.be.Poll(-1)
			if n > 0 || err != nil {
				ch <- res{n, err}
				return
			}
			// 0 without error: woken early (EINTR); wait again.
		}
	}()
	_, err := unix.Write(peer, []byte("wake"))
	require.NoError(t, err)
	r := waitCh(t, ch, "Poll(-1) to return once a watched fd is readable")
	require.NoError(t, r.err)
	ev, ok := evFor(b.sink.take(), a)
	require.True(t, ok, "the readable fd was not reported")
	require.NotZero(t, ev&evlib.Readable)
	require.NoError(t, b.be.Remove(a))
}

// A Poll that may block counts its wait in Counters.Waits before it
// blocks: the core-level tests learn from it that the loop is idle, and
// without it each of them would wait out the hang guard, saying only that
// the loop never blocked.
func (s *suite) testBackendPollCountsWaits(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	_, peer := b.watchReadable()
	w0 := b.ctr.Waits.Load()
	done := make(chan error, 1)
	go func() {
		for {
			n, err := b.be.Poll(-1)
			if n > 0 || err != nil {
				done <- err
				return
			}
			// 0 without error: woken early (EINTR); wait again.
		}
	}()
	// Whatever happens below, the Poll ends before the backend is closed.
	defer func() {
		unix.Write(peer, []byte("wake"))
		waitCh(t, done, "Poll(-1) to return once a watched fd is readable")
		b.sink.take()
	}()
	waitUntil(t, "a Poll(-1) counting its wait in evlib.Config.Counters.Waits (Poll must count a wait that may block before it blocks, not after it or not at all; see evlib.Counters)",
		func() bool { return b.ctr.Waits.Load() != w0 })
}

// A signal that interrupts Poll's wait (Go's own preemption signal, or one
// the program handles) makes an empty wait, not an error: the core ends
// Run on a Poll error (core.ErrBackend). epoll_wait, poll and kevent are
// never restarted after a signal, whatever SA_RESTART says. The thread
// blocked in Poll gets SIGURG again and again while it waits.
func (s *suite) testBackendPollSignalled(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	a, _ := b.watchReadable()
	tid := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- threadID()
		for range 3 { // each may return early, when a signal cut it short
			if _, err := b.be.Poll(50 * time.Millisecond); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	id := <-tid
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := interruptThread(id); err != nil {
				t.Errorf("conformance: signalling the polling thread: %v", err)
				return
			}
			time.Sleep(500 * time.Microsecond)
		}
	}()
	err := waitCh(t, done, "Poll while its thread is signalled")
	close(stop)
	<-stopped
	require.NoError(t, err, "Poll whose wait a signal interrupted")
	require.NoError(t, b.be.Remove(a))
}

// The Sink may Add, Modify and Remove from inside Ready (the core adopts,
// closes and changes interest while handling a batch): a removed fd is
// reported no more, an added one is watched from then on.
func (s *suite) testBackendChangesInsideReady(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	be := b.be
	var fds, peers [4]int
	for i := range fds {
		fds[i], peers[i] = nonblockPair(t)
		defer unix.Close(fds[i])
		defer unix.Close(peers[i])
	}
	for i := range 3 {
		require.NoError(t, be.Add(fds[i], evlib.KindStream, evlib.Readable))
		_, err := unix.Write(peers[i], []byte("x"))
		require.NoError(t, err)
	}
	// Whichever fd comes first removes the other two, adds the fourth and
	// drops its own interest.
	first := -1
	b.sink.hook = func(fd int, ev evlib.Events) {
		if first >= 0 {
			return
		}
		first = fd
		for i := range 3 {
			if fds[i] != fd {
				require.NoError(t, be.Remove(fds[i]))
			}
		}
		require.NoError(t, be.Add(fds[3], evlib.KindStream, evlib.Readable))
		require.NoError(t, be.Modify(fd, 0))
	}
	var got []report
	waitUntil(t, "a report for one of three readable fds", func() bool {
		got = b.poll(100 * time.Millisecond)
		return len(got) > 0
	})
	require.GreaterOrEqual(t, first, 0)
	b.sink.hook = nil
	// Reports for the removed fds may follow in the same batch (the core
	// ignores them); from the next Poll on there must be none.
	got = b.poll(0)
	for i := range 3 {
		if ev, ok := evFor(got, fds[i]); ok {
			t.Fatalf("conformance: fd %d reported %v after it was removed or its interest dropped inside Ready", fds[i], ev)
		}
	}
	_, err := unix.Write(peers[3], []byte("y"))
	require.NoError(t, err)
	require.Equal(t, evlib.Readable, b.pollFor(fds[3], evlib.Readable), "fd added inside Ready")
	require.NoError(t, be.Remove(first))
	require.NoError(t, be.Remove(fds[3]))
}

// Checklist 25 (backend side): adding an fd numbered far beyond those
// watched so far (where a backend's fd-indexed table grows) leaves the fds
// watched before it as they were: Add of one still fails with ErrExist,
// and Modify and Remove of one still take effect.
func (s *suite) testBackendTableGrowth(t *testing.T) {
	b := s.newBackend(t)
	be := b.be
	first, firstPeer := b.watchReadable() // so that a is not the first entry of a table either
	a, peer := b.watchReadable()
	lo, hiPeer := nonblockPair(t)
	defer unix.Close(hiPeer)
	hi, err := unix.FcntlInt(uintptr(lo), unix.F_DUPFD_CLOEXEC, highFD())
	unix.Close(lo)
	require.NoError(t, err)
	defer unix.Close(hi)
	require.Greater(t, hi, a)

	require.NoError(t, be.Add(hi, evlib.KindStream, evlib.Readable), "Add of the high fd %d", hi)
	require.ErrorIs(t, be.Add(a, evlib.KindStream, evlib.Readable), evlib.ErrExist,
		"Add of fd %d, watched since before fd %d was added", a, hi)
	require.NoError(t, be.Modify(a, evlib.Readable|evlib.Writable),
		"Modify of fd %d, watched since before fd %d was added", a, hi)
	if !b.app {
		require.Equal(t, evlib.Writable, b.pollFor(a, evlib.Writable),
			"idle socket watched before the high fd was added, its interest changed to R|W after")
		_, err = unix.Write(hiPeer, []byte("x"))
		require.NoError(t, err)
		require.Equal(t, evlib.Readable, b.pollFor(hi, evlib.Readable), "the high fd with data")
		_, err = unix.Write(peer, []byte("x"))
		require.NoError(t, err)
	}
	require.NoError(t, be.Remove(a))
	require.ErrorIs(t, be.Modify(a, evlib.Readable), evlib.ErrNotWatched, "Modify of fd %d once removed", a)
	if !b.app {
		b.notReported(a, "fd removed after the table grew, with unread data and interest R|W")
	}
	require.NoError(t, be.Add(a, evlib.KindStream, evlib.Readable), "Add of fd %d again once removed", a)
	if !b.app {
		_, err = unix.Write(firstPeer, []byte("x"))
		require.NoError(t, err)
		require.Equal(t, evlib.Readable, b.pollFor(first, evlib.Readable),
			"fd %d, watched for Readable since before the high fd was added, with data", first)
	}
	for _, fd := range []int{first, a, hi} {
		require.NoError(t, be.Remove(fd))
	}
}

// Checklist 1: with more fds ready at once than one wait usually returns
// (where a backend's event buffer grows), every one is reported, with its
// events, each at most once per Poll, and no fd that is not watched is.
func (s *suite) testBackendManyReady(t *testing.T) {
	b := s.newBackend(t)
	b.needPoll()
	n := min(300, (highFD()-64)/3) // two fds each, below the descriptor limit
	watched := map[int]bool{}
	for range n {
		a, peer := b.watchReadable()
		_, err := unix.Write(peer, []byte("x"))
		require.NoError(t, err)
		watched[a] = true
	}
	seen := map[int]bool{}
	waitUntil(t, fmt.Sprintf("all %d readable fds to be reported", n), func() bool {
		for _, r := range b.poll(100 * time.Millisecond) { // b.poll checks counts and duplicates
			require.True(t, watched[r.fd], "fd %d reported, which is not watched", r.fd)
			require.Equal(t, evlib.Readable, r.ev, "fd %d with data, interest Readable", r.fd)
			seen[r.fd] = true
		}
		return len(seen) == n
	})
	for fd := range watched {
		require.NoError(t, b.be.Remove(fd))
	}
}

// A backend without a Waker of its own is woken through the core's KindWake
// fd: it must watch it like any other fd, so that a signal from another
// goroutine makes a Poll(-1) in progress report it and return.
func (s *suite) testBackendWakeFD(t *testing.T) {
	b := s.newBackend(t)
	if _, ok := b.be.(evlib.Waker); ok {
		t.Skipf("conformance: backend %q has its own evlib.Waker (tested by Backend/Waker): the core adds no wake fd to it", s.name)
	}
	b.needPoll()
	w, err := sys.NewWaker()
	require.NoError(t, err)
	defer w.Close()
	require.NoError(t, b.be.Add(w.R, evlib.KindWake, evlib.Readable))
	defer b.be.Remove(w.R)
	b.notReported(w.R, "the wake fd before any signal")
	// From another goroutine, as the core's wakeups come. The Poll below
	// may not have started yet: a signal before it is as good, since the
	// fd stays readable until drained.
	go w.Signal()
	// An interrupted wait may return empty: wait again, within the guard.
	deadline := time.Now().Add(hang)
	for {
		if ev, ok := evFor(b.poll(-1), w.R); ok {
			require.NotZero(t, ev&evlib.Readable, "the signalled wake fd reported %v, want R", ev)
			break
		}
		require.True(t, time.Now().Before(deadline), "the wake fd a goroutine signalled never reported: the core's KindWake fd must be watched like any other")
	}
	w.Drain()
	b.notReported(w.R, "the wake fd once drained")
}

// A backend with its own Waker: Wake from another goroutine makes a Poll
// in progress, or the next one, return; after Close it is harmless.
func (s *suite) testBackendWaker(t *testing.T) {
	b := s.newBackend(t)
	w, ok := b.be.(evlib.Waker)
	if !ok {
		t.Skipf("conformance: backend %q has no evlib.Waker (and does not declare CapOwnWaker): the core wakes it through its own wake fd, which the Core tests cover", s.name)
	}
	b.needPoll()
	// A wakeup sent before Poll makes the next Poll return.
	require.NoError(t, w.Wake())
	goWithin(t, "Poll(-1) after Wake", func() { b.be.Poll(-1) })
	// A wakeup sent while Poll blocks makes it return.
	done := make(chan error, 1)
	go func() {
		_, err := b.be.Poll(-1)
		done <- err
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// Poll may not have started yet when a wakeup arrives: keep
		// waking (each is harmless) until it returned.
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				w.Wake()
			}
		}
	}()
	require.NoError(t, waitCh(t, done, "Poll(-1) to return after Wake from another goroutine"))
	require.NoError(t, b.be.Close())
	// Harmless: the numbers Close freed go to the next files opened (here
	// a socket pair's, the lowest free), and a Wake that still signalled
	// a descriptor of its own would write into one of them.
	p0, p1 := nonblockPair(t)
	defer unix.Close(p0)
	defer unix.Close(p1)
	pair := [2]int{p0, p1}
	var werr error
	goWithin(t, "Wake after Close", func() { werr = w.Wake() })
	require.NoError(t, werr, "Wake after Close must be a harmless no-op")
	for i, fd := range pair {
		n, err := unix.Read(fd, make([]byte, 64))
		require.ErrorIs(t, err, unix.EAGAIN,
			"Wake after Close wrote %d bytes into fd %d, which took a number Close had freed: a Wake after Close must not touch the backend's old descriptors", max(n, 0), pair[1-i])
	}
}

// Checklist 36 (backend side): pipes are watched like sockets, where the
// backend declares CapFiles, and a read end whose writers are gone is
// reported with Hangup.
func (s *suite) testBackendFiles(t *testing.T) {
	s.needFiles(t, "pipes and ttys are not tested")
	b := s.newBackend(t)
	b.needPoll()
	var p [2]int
	require.NoError(t, nonblockPipe(&p))
	r, w := p[0], p[1]
	defer unix.Close(r)
	wOpen := true
	defer func() {
		if wOpen {
			unix.Close(w)
		}
	}()
	require.NoError(t, b.be.Add(r, evlib.KindFile, evlib.Readable))
	require.NoError(t, b.be.Add(w, evlib.KindFile, evlib.Writable))
	require.Equal(t, evlib.Writable, b.pollFor(w, evlib.Writable), "empty pipe's write end")
	b.notReported(r, "empty pipe's read end")
	_, err := unix.Write(w, []byte("pipe"))
	require.NoError(t, err)
	require.Equal(t, evlib.Readable, b.pollFor(r, evlib.Readable), "pipe with data")
	buf := make([]byte, 16)
	n, err := b.read(r, buf)
	require.NoError(t, err)
	require.Equal(t, "pipe", string(buf[:n]))
	require.NoError(t, b.be.Remove(w))
	require.NoError(t, unix.Close(w))
	wOpen = false
	// Hangup, not Readable alone: the core learns a pipe's end of file
	// from it (RAW_CLOSE_FILE), as it does not read a file itself.
	b.pollFor(r, evlib.Hangup)
	n, err = b.read(r, buf)
	require.NoError(t, err)
	require.Zero(t, n, "read of a pipe whose writer closed must return end of file")
	require.NoError(t, b.be.Remove(r))
}

// A pipe's write end whose reader closed (where epoll and poll(2) say
// only ERR, no HUP) is reported with Hangup or Error, whatever the
// interest, where the backend declares CapFiles: the core learns from it
// that writing is over.
func (s *suite) testBackendPipeReaderGone(t *testing.T) {
	s.needFiles(t, "pipes are not tested")
	b := s.newBackend(t)
	b.needPoll()
	var p [2]int
	require.NoError(t, nonblockPipe(&p))
	r, w := p[0], p[1]
	defer unix.Close(w)
	require.NoError(t, b.be.Add(w, evlib.KindFile, evlib.Writable))
	require.Equal(t, evlib.Writable, b.pollFor(w, evlib.Writable), "empty pipe's write end")
	require.NoError(t, unix.Close(r))
	ev := b.pollFor(w, evlib.Hangup|evlib.Error)
	require.NotZero(t, ev&(evlib.Hangup|evlib.Error), "write end of a pipe whose reader closed reported as %v", ev)
	require.NoError(t, b.be.Modify(w, 0))
	if ev, ok := evFor(b.poll(0), w); ok {
		// b.poll has checked that ev is not empty.
		require.Zero(t, ev&(evlib.Readable|evlib.Writable), "interest 0, yet reported %v", ev)
	}
	require.NoError(t, b.be.Remove(w))
}

// Close is idempotent, leaves the fds the core added open, and Add,
// Modify and Poll after it return ErrClosed.
func (s *suite) testBackendClose(t *testing.T) {
	// Once before measuring: a library may start process-wide pollers of
	// its own on first use and keep them (netpoll does).
	warm := s.newBackend(t)
	warm.watchReadable()
	require.NoError(t, warm.be.Close())
	a, peer := nonblockPair(t)
	t.Cleanup(func() {
		unix.Close(a)
		unix.Close(peer)
	})
	baseFDs, baseG := openFDs(), runtime.NumGoroutine()
	b := s.newBackend(t)
	require.NoError(t, b.be.Add(a, evlib.KindStream, evlib.Readable))
	require.NoError(t, b.be.Close())
	require.NoError(t, b.be.Close(), "second Close")
	require.True(t, fdOpen(a), "Close closed an fd the core added")
	// Close releases what New and Add created: descriptors at once,
	// goroutines once they got round to ending.
	checkFDs(t, baseFDs)
	checkGoroutines(t, baseG)
	// ErrClosed, not an error of a system call on a descriptor the
	// backend closed, whose number may belong to something else by now.
	require.ErrorIs(t, b.be.Add(peer, evlib.KindStream, evlib.Readable), evlib.ErrClosed, "Add after Close")
	require.ErrorIs(t, b.be.Modify(a, evlib.Readable|evlib.Writable), evlib.ErrClosed, "Modify after Close of an fd watched before")
	// Remove after Close returns nil and touches nothing: the core may
	// remove an fd from a closed backend, and the number of the
	// descriptor the backend closed (its epoll or kqueue instance) is
	// the lowest free one, which the backend made next takes.
	other := s.newBackend(t)
	require.NoError(t, other.be.Add(a, evlib.KindStream, evlib.Readable))
	require.NoError(t, b.be.Remove(a), "Remove after Close of an fd watched before")
	if !other.app {
		_, err := unix.Write(peer, []byte("x"))
		require.NoError(t, err)
		require.Equal(t, evlib.Readable, other.pollFor(a, evlib.Readable),
			"fd %d with data, watched by a backend made after the one that watched it before was closed and asked to remove it", a)
	}
	require.NoError(t, other.be.Remove(a))
	_, err := b.be.Poll(0)
	if b.app && errors.Is(err, evlib.ErrAppDriven) {
		return
	}
	require.ErrorIs(t, err, evlib.ErrClosed, "Poll after Close")
}
