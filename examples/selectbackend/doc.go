// Package selectbackend is a plugloop event-loop backend on select(2),
// libevent's oldest eventop, registered under the name "select".
//
// It is a worked example of writing a backend from plugloop's public API
// alone: it imports evlib (the contract), and its tests import conformance
// (the suite) and core, never plugloop's internal packages. It is a module
// of its own, so the compiler holds it to that, and plugloop's CI runs its
// tests, under -race too, on every change. Read it next to the evlib
// package documentation and README.md's "Writing a backend".
//
// A program links it in for its side effect and selects it by name:
//
//	import _ "example.com/selectbackend"
//
//	ctx, err := core.New(core.Info{EventLib: "select", ...})
//
// or runs any plugloop program on it with PLUGLOOP_EVLIB=select. It never
// becomes a program's default (its Priority is below every built-in
// backend's).
//
// How it works: the interest lives in two fd_sets, one for reading and
// one for writing, kept between waits; Poll copies them, calls select(2)
// on the copies and reports the fds left set, in fd order, read from the
// sets a machine word at a time. Interest changes make no system call.
// Waker is its own: a pipe, non-blocking and close-on-exec, whose read end
// is always in the read set; Wake writes one byte, and only when no wakeup
// is pending.
//
// select(2) says readable or writable and has no word for a hang-up or an
// error: a peer that is gone makes an fd readable, as data does. The core
// needs to know which (a paused connection whose peer hung up is read to
// its end at once, and a pipe's end of file is a hang-up), so after a
// wait that found fds ready the backend asks poll(2) about those fds
// alone, without blocking, for the POLLHUP and POLLERR it reports
// whatever the events asked for, and adds evlib.Hangup and evlib.Error.
// That is a second system call per wait that found something, and none
// per fd watched.
//
// It runs on Linux, macOS, FreeBSD, NetBSD, OpenBSD and DragonFly. On other
// systems it registers as unavailable, saying why.
//
// # Limits
//
//   - It watches only fds below FD_SETSIZE (SetSize: 1024 on most of these
//     systems, 256 on NetBSD, as golang.org/x/sys defines unix.FdSet). Add
//     of a higher fd fails with an error wrapping evlib.ErrBadFD and
//     changes nothing; the core then refuses the fd (AdoptFD returns that
//     error; a connection it accepted is closed, and the log says why). A
//     program on this backend keeps its descriptors below SetSize best by
//     lowering its soft RLIMIT_NOFILE to SetSize, as the package's tests do
//     for the conformance suite: the core's default Info.FDLimit follows
//     the limit, and so do the numbers of the fds the rest of the program
//     opens.
//   - A connection watched with no interest is in no set, so its peer's
//     reset is not seen until it writes or its timeouts end it: the backend
//     does not declare evlib.CapHangupWithoutInterest.
//   - Each wait costs the kernel and the backend time in proportion to the
//     highest watched fd, not to the number of ready ones.
package selectbackend
