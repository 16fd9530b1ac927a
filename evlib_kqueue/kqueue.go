// Package evlib_kqueue is plugloop's kqueue(2) backend for macOS, FreeBSD,
// NetBSD, OpenBSD and DragonFly BSD: level triggered (EVFILT_READ and
// EVFILT_WRITE without EV_CLEAR), with every interest change batched into
// the changelist of the next kevent call, so Modify and Remove cost no
// system call of their own. After a busy batch it polls once without
// blocking before it blocks, like the epoll backend.
//
// An fd with interest 0 has no knote, and kqueue reports nothing for a
// descriptor without one (EV_EOF and the socket's error come on
// EVFILT_READ or EVFILT_WRITE), so the backend does not declare
// evlib.CapHangupWithoutInterest: a half-open connection
// (core.Protocol.AllowHalfOpen) learns of its peer's reset when it writes
// or times out. (The backend's level-triggered EVFILT_READ, left
// registered for the reset alone, would fire at once for the end of stream
// already read, in every wait.)
//
// Import it for its side effect of registering the backend "kqueue":
//
//	import _ "github.com/plugloop/plugloop/evlib_kqueue"
//
// On Linux and other systems without kqueue it registers as unavailable.
//
// Where the system's kqueue has EVFILT_USER (macOS, FreeBSD, DragonFly) the
// backend wakes itself with a user event (evlib.CapOwnWaker), so the core
// needs no wakeup pipe; on NetBSD and OpenBSD the core watches its own pipe
// like any other fd.
//
// It can attach to a kqueue the application owns (evlib.CapForeignLoop):
// pass the kqueue fd, as an int, in core.Info.Foreign. The backend then
// registers the core's fds in that kqueue, one kevent call per change (with
// EV_RECEIPT where the system has it, so that the call never takes events
// meant for the application), and never waits on it: Poll fails with
// evlib.ErrAppDriven. The application's loop receives the events of the
// core's fds, which it learns from the poll-fd callbacks, and forwards them
// to the core; the core's wakeup pipe is one of those fds, because a
// backend on a foreign kqueue has no waker of its own. Close leaves the
// application's kqueue open.
package evlib_kqueue

import "github.com/plugloop/plugloop/evlib"

// Name is the backend's registry name.
const Name = "kqueue"

func init() {
	d := descriptor()
	d.Name, d.Flag, d.Priority = Name, evlib.FlagKqueue, 20
	if err := evlib.Register(d); err != nil {
		panic(err)
	}
}
