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
// application would; or, for a loop that runs itself (RunLoop), runs it
// and serves its own pipe from its callbacks. RunHost runs the suite in a host; Run uses
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
// service thread. It is a WaitLoop, whose wait the suite's loop goroutine
// calls and whose ready pollfds it services (poll, epoll), or a RunLoop,
// which keeps its wait and its dispatch to itself and calls back (gnet's
// Poller.Polling); New returning a loop that is neither fails the test.
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
	// Watched returns plugloop's fds in the loop's watch set (not the
	// application's own) with their interest: what the application's
	// loop really watches, read from the loop itself where it can.
	Watched() map[int]evlib.Events
	// Close releases the loop. It is called after the context is gone
	// (and, for a RunLoop, after Run returned).
	Close() error
}

// WaitLoop is an application's loop whose wait the application calls and
// whose ready fds it dispatches itself: the suite's loop goroutine calls
// ServiceAdjustTimeout, Wait, ServiceFD for every ready pollfd and
// Service(0), checking each result.
type WaitLoop interface {
	HostLoop
	// Wait waits at most timeout (< 0: no limit) until a watched fd is
	// ready and appends the ready ones to dst as pollfds with Revents
	// set, plugloop's and the application's own alike. An interrupted
	// wait returns nothing and no error.
	Wait(dst []unix.PollFd, timeout time.Duration) ([]unix.PollFd, error)
}

// RunLoop is an application's loop that is a function running for good
// and calling back for each ready fd, such as gnet's Poller.Polling,
// which returns only to stop and cannot be left between two events and
// entered again. The loop hands plugloop's fds to plugloop itself (the
// backend attached through Info.Foreign is driven from the loop's
// callbacks and tasks, as with evlib_gnet's Dispatcher) and calls the
// suite's hooks.
//
// The suite calls Run on a goroutine of its own, its loop goroutine,
// before core.New, and steers the loop with tasks: between its passes and
// runs the loop is parked in a task of the suite's, so nothing of plugloop
// runs while the test goroutine works with the thread (as with a
// WaitLoop nobody waits). A single pass, what Thread.Service is to
// Context.Run, lets the loop go until its own fd says the pass is over (at
// once for a zero timeout, after the timeout, or once one of plugloop's
// fds came) and the suite's next task parks it. A run lets it go until
// its context ends (the loop is parked again) or plugloop is destroyed:
// the suite then checks, from the loop's own
// callbacks, that it goes on serving its own fd with nothing of plugloop's
// left in its set, and stops it with a task returning true, as the
// application would. Callbacks therefore always run on the loop
// goroutine, and the checks the suite makes of ServiceFD's results for a
// WaitLoop are left to the loop, which dispatches itself. A pass counts
// one wait; in a run the suite counts a wait each time the loop goes back
// to waiting after events it handed to plugloop or to the application, or
// after a function the suite posted to see it idle (a task of the
// suite's, queued behind them, counts it), not the wakeups plugloop's
// backend makes with tasks of its own.
type RunLoop interface {
	HostLoop
	// Run runs the loop on the calling goroutine until a task queued
	// with Do returns true (Run returns nil) or the loop fails. For an
	// fd added with AddOwn it calls hooks.Own instead of handing it to
	// plugloop; for every other fd it calls hooks.Plugloop, then hands
	// it to plugloop.
	Run(hooks LoopHooks) error
	// Do queues f as a task of the loop, from any goroutine, before or
	// while Run runs: f runs on Run's goroutine between events, after the
	// tasks queued before it. Run returns once a task returned true.
	Do(f func() (stop bool)) error
}

// LoopHooks are the suite's callbacks from a RunLoop, made on Run's
// goroutine.
type LoopHooks struct {
	Own      func(fd int) // an fd of the application's own is ready
	Plugloop func(fd int) // an fd of plugloop's is ready; it is handed to plugloop next
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
	d := lookup(t, h.EventLib)
	require.NotNil(t, h.New, "conformance: host %q has no New", h.Name)
	runSuite(t, d, &h)
}
