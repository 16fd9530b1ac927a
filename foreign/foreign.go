//go:build unix

// Package foreign runs plugloop inside a poll loop the application owns:
// the application is the event loop, plugloop only tells it what to watch
// and services what it hands back. Nothing in plugloop waits.
//
// Selecting the backend "foreign" (import this package, then
// core.Info{EventLib: "foreign"} or PLUGLOOP_EVLIB=foreign) makes every
// service thread app-driven:
//
//   - The first protocol receives ADD_POLL_FD, DEL_POLL_FD and
//     CHANGE_MODE_POLL_FD for every fd plugloop needs watched — including
//     the wake fd that carries CancelService and Post, which lws hides —
//     bracketed by LOCK_POLL/UNLOCK_POLL (Event.Len 1 around adds and
//     deletes, 0 around mode changes). Each arrives before any event for
//     that fd can matter, and changes made inside any callback have reached
//     the application before ServiceFD or Service returns.
//   - The application waits on its own set for at most
//     Thread.ServiceAdjustTimeout(max) (0 while forced service is pending or
//     a timer is due), offers every ready pollfd to Thread.ServiceFD (which
//     zeroes Revents of plugloop's fds and leaves the others alone), then
//     calls Thread.Service(0) for forced service and timers. Service never
//     blocks here. The fds plugloop closes while it offers them stay open
//     until that Service(0) (or the next ServiceAdjustTimeout), so that no
//     fd opened meanwhile gets the number of one whose events of the same
//     wait are still to be offered. ServiceFD and Service return
//     core.ErrInService while another goroutine's loop-only call holds the
//     thread: no error for the loop, which that call wakes when it is done.
//   - The wait must be level-triggered (poll(2), select(2), epoll without
//     EPOLLET): plugloop may leave an fd ready, input it has not read yet
//     or a connection still queued on a listener, and counts on being
//     offered it again after the next wait.
//   - An fd plugloop watches with no events (Event.Poll.Events 0) stays
//     in the set: poll(2) and epoll report POLLHUP and POLLERR whatever the
//     events asked for, and the application offers them to ServiceFD like
//     any other, which is how a half-open connection
//     (core.Protocol.AllowHalfOpen) learns at once that its peer reset it.
//     The backend declares so (evlib.CapHangupWithoutInterest); a loop
//     that drops such an fd from its wait, or cannot report a hang-up
//     without a filter (kqueue), loses only that: the connection then
//     learns of the reset at its next write or timeout.
//   - Destroy deregisters every fd (DEL_POLL_FD), closes only plugloop's
//     own fds, installs no signal handler and leaves the loop running.
//     Called on another goroutine while the loop sleeps, it does not wake
//     the loop (closing an fd wakes no poll watching it): PROTOCOL_DESTROY,
//     delivered on that goroutine, is where the application wakes it.
//     PollSet does that itself.
//
// PollSet does the bookkeeping for the commonest host, a unix.Poll loop.
//
// The epoll backend offers the same for an application's epoll instance:
// pass its fd as core.Info{EventLib: "epoll", Foreign: []any{epfd}}; plugloop
// then registers its fds there, and the application forwards the events of
// fds it does not know to ServiceFD (see PollFromEpoll).
package foreign

import (
	"fmt"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// Name is the backend's registry name.
const Name = "foreign"

func init() {
	if err := evlib.Register(evlib.Descriptor{
		Name: Name, Flag: evlib.FlagForeign,
		Caps: evlib.CapAppDriven | evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapFiles |
			evlib.CapHangupWithoutInterest | evlib.CapUnixReset,
		New: newBackend,
	}); err != nil {
		panic(err)
	}
}

// backend keeps only what the contract needs to answer correctly; the
// application's set is kept by the core's poll-fd callbacks.
type backend struct {
	watched map[int]evlib.Events
	closed  bool
}

func newBackend(cfg evlib.Config) (evlib.Backend, error) {
	if cfg.Foreign != nil {
		return nil, fmt.Errorf("%w: the foreign backend takes no loop object; the application's loop learns what to watch from the poll-fd callbacks", evlib.ErrForeignUnsupported)
	}
	return &backend{watched: map[int]evlib.Events{}}, nil
}

func (b *backend) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if !sys.ValidFD(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return fmt.Errorf("%w: fd %d: %v", evlib.ErrBadFD, fd, err)
	}
	if _, ok := b.watched[fd]; ok {
		return fmt.Errorf("%w: fd %d", evlib.ErrExist, fd)
	}
	b.watched[fd] = ev
	return nil
}

func (b *backend) Modify(fd int, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if _, ok := b.watched[fd]; !ok {
		return fmt.Errorf("%w: fd %d", evlib.ErrNotWatched, fd)
	}
	b.watched[fd] = ev
	return nil
}

func (b *backend) Remove(fd int) error {
	delete(b.watched, fd)
	return nil
}

func (b *backend) Poll(time.Duration) (int, error) {
	if b.closed {
		return 0, evlib.ErrClosed
	}
	return 0, evlib.ErrAppDriven
}

func (b *backend) Close() error {
	b.closed = true
	clear(b.watched)
	return nil
}
