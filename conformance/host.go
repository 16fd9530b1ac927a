//go:build unix

package conformance

import (
	"errors"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/sys"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Host is an application's own event loop, for running the suite in
// foreign mode: the core never waits, the suite's loop goroutines are the
// application's loops. Each asks its host loop what became ready, offers
// every ready pollfd (the application's own ones too) to Thread.ServiceFD,
// serves its own pipe, and calls Thread.Service(0), exactly as an
// application would. RunHost runs the suite in a host; Run uses
// PollSetHost for an app-driven backend.
type Host struct {
	// Name names the host in test output.
	Name string
	// EventLib is the backend the core runs on in this host ("foreign",
	// or a backend that attaches to the loop through Info.Foreign).
	EventLib string
	// New creates the application's loop for one service thread of a
	// context. The suite calls it before core.New for every thread, in
	// order from 0, runs each loop on a goroutine of its own, and closes
	// every loop after the context is gone. A host that runs a single
	// loop returns nil for thread > 0: the suite then skips the tests
	// that need several service threads (SMP, checklist 34), saying so.
	New func(t testing.TB, thread int) HostLoop
}

// HostLoop is one instance of the application's loop, driving one
// service thread.
type HostLoop interface {
	// Setup adjusts the context's Info before core.New for the loop's
	// thread: it sets that thread's entry of Info.Foreign, or wraps
	// Info.Protocols[0] when the loop learns its watch set from the
	// poll-fd callbacks (which then carry Event.Thread: a loop keeps
	// only its own thread's fds). With several loops, each one's Setup
	// runs in turn on the same Info.
	Setup(info *core.Info)
	// AddOwn adds an fd of the application's own, watched for Readable.
	AddOwn(fd int) error
	// Wait waits at most timeout (< 0: no limit) until a watched fd is
	// ready and appends the ready ones to dst as pollfds with Revents
	// set, plugloop's and the application's own alike. An interrupted
	// wait returns nothing and no error.
	Wait(dst []unix.PollFd, timeout time.Duration) ([]unix.PollFd, error)
	// Watched returns plugloop's fds in the loop's watch set (not the
	// application's own) with their interest: what the application's
	// loop really watches, read from the loop itself where it can.
	Watched() map[int]evlib.Events
	// Close releases the loop. It is called after the context is gone.
	Close() error
}

// PollSetHost is a unix.Poll loop per service thread, each keeping its
// thread's fds with a foreign.PollSet, on the app-driven backend named
// eventLib.
func PollSetHost(eventLib string) Host {
	return Host{Name: "PollSet", EventLib: eventLib, New: func(_ testing.TB, thread int) HostLoop {
		return &pollSetLoop{set: &foreign.PollSet{Thread: thread}}
	}}
}

type pollSetLoop struct {
	set *foreign.PollSet
	own []unix.PollFd
	buf []unix.PollFd
}

func (l *pollSetLoop) Setup(info *core.Info) {
	info.Protocols[0] = l.set.Protocol(info.Protocols[0])
}

func (l *pollSetLoop) AddOwn(fd int) error {
	l.own = append(l.own, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	return nil
}

func (l *pollSetLoop) Wait(dst []unix.PollFd, timeout time.Duration) ([]unix.PollFd, error) {
	l.buf = l.set.AppendTo(append(l.buf[:0], l.own...))
	if _, err := unix.Poll(l.buf, sys.Msec(timeout)); err != nil {
		if errors.Is(err, unix.EINTR) {
			return dst, nil
		}
		return dst, err
	}
	for _, p := range l.buf {
		if p.Revents != 0 {
			dst = append(dst, p)
		}
	}
	return dst, nil
}

func (l *pollSetLoop) Watched() map[int]evlib.Events {
	m := map[int]evlib.Events{}
	for _, p := range l.set.AppendTo(nil) {
		var ev evlib.Events
		if p.Events&unix.POLLIN != 0 {
			ev |= evlib.Readable
		}
		if p.Events&unix.POLLOUT != 0 {
			ev |= evlib.Writable
		}
		m[int(p.Fd)] = ev
	}
	if n := l.set.Len(); n != len(m) {
		m[-1] = evlib.Events(n) // duplicates: make the comparison fail
	}
	return m
}

func (l *pollSetLoop) Close() error { return nil }

// RunHost runs the whole suite with the core in foreign mode inside the
// host's loops: "Backend" against the backend named h.EventLib, then every
// "Core" test with the suite's loop goroutines being h's loops (one per
// service thread), plus the external-poll tests (checklist 10, 13, 26, 27,
// 33), then "NoLeaks".
func RunHost(t *testing.T, h Host) {
	t.Helper()
	d, err := evlib.Lookup(h.EventLib)
	if errors.Is(err, evlib.ErrUnavailable) {
		t.Skipf("conformance: backend %q cannot run here: %v", h.EventLib, err)
	}
	require.NoError(t, err, "conformance: looking up backend %q", h.EventLib)
	require.NotNil(t, h.New, "conformance: host %q has no New", h.Name)
	runSuite(t, d, &h)
}
