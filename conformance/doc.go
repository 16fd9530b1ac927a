//go:build unix

// Package conformance is plugloop's conformance suite for event-loop
// backends, in the spirit of golang.org/x/net/nettest.TestConn: every
// backend package calls it from its tests, and a backend is conforming
// when the whole suite passes.
//
// A backend registered with evlib.Register (from its package's init) runs
// the suite with one line in a _test.go file of its package:
//
//	func TestConformance(t *testing.T) { conformance.Run(t, "mybackend") }
//
// A backend that is not registered (one a program builds and hands over
// itself) uses RunBackend with its descriptor instead; the suite registers
// it under its Name for the core-level tests, so the Name must not be
// taken by another backend. RunContract runs the "Backend" and "NoLeaks"
// parts only: for a backend under construction, or for a simulated one
// whose fake clock the core-level tests, which measure wall time, cannot
// follow.
//
// The suite has three parts, each a subtest:
//
//   - "Backend" drives the evlib.Backend directly, created with the
//     descriptor's New and a recording evlib.Sink: Add/Modify/Remove
//     idempotency and errors, readiness reports (Readable, Writable,
//     Hangup, Error) as independent bits, many fds ready at once, fds
//     watched before a far higher one was added (fd 4000, or 16 below the
//     soft RLIMIT_NOFILE where that is lower), Poll timeouts, a
//     blocking Poll counted in evlib.Counters.Waits before it blocks
//     (the "Core" part learns from it that the loop is idle), Close
//     (ErrClosed after it, and every descriptor and goroutine New and Add
//     made released), the core's wake fd (KindWake) for a backend without
//     a Waker of its own, and the declared capabilities (IO, Waker,
//     files). When it fails the "Core" part is skipped: its tests would
//     each wait out the hang guard on the same fault.
//   - "Core" runs a core.Context on the backend with real loopback TCP
//     sockets, unix sockets and pipes: echo, WRITEABLE semantics, closes
//     inside a ready batch, fd reuse, hangups, partial writes, rx flow
//     control and back-pressure, input handed over with core.WithReadbuf,
//     forced service, timers (never early, in deadline order),
//     cancel-service, Post, wrong-goroutine detection, destroy, the
//     poll-fd callbacks, a wait counted after every pass that events
//     brought (a posted function may have run in it), and fd and
//     goroutine leaks. The model-based test
//     ("Model") runs random programs of such steps mixed — the peer
//     writing and reading up to 512 KiB at a time, half-closing or closing,
//     the application writing in RAW_WRITEABLE, pausing and resuming rx
//     and closing from inside callbacks and from Thread.Post, Conn and
//     thread timers, CancelService — over several connections at once,
//     and checks every callback and every byte against what package
//     core's documentation promises; it runs a fixed list of programs
//     (prefixes of them under the race detector), then every program of
//     the directory found, each of which once found a bug on some
//     backend, then, where SweepEnv asks for them, random programs. It
//     stops at the first program that fails and says how many it left.
//     RunModel runs any other, for a fuzz target. One timer test runs a
//     context on the backend wrapped so that every Poll returns after half
//     its timeout (evlib allows a Poll to return early); the wrapper is
//     registered once per process, with the lowest priority, as
//     "conformance-early-poll-" followed by the backend's name.
//   - "NoLeaks" checks that the process holds the descriptors and
//     goroutines it held before the suite.
//
// Foreign mode: RunHost runs the whole suite with the core driven by an
// application's loop (a Host: PollSetHost, EpollHost, or your own), the
// suite's loop goroutine acting as the application — ServiceAdjustTimeout,
// the host's wait, ServiceFD for every ready pollfd, Service(0) — while
// serving a pipe of its own that plugloop must never touch. A loop that
// keeps its wait and dispatch to itself and cannot be left between events
// (gnet's Polling) is a RunLoop: the suite runs it on its loop goroutine
// for good, serves its pipe from the loop's callbacks and steers it with
// the loop's tasks, parking it between single passes (see RunLoop). With several
// service threads each thread gets a loop of its own (Host.New is called
// per thread), run on a goroutine of its own, and the SMP test (34) drives
// them all at once; a host that runs a single loop returns nil from New for
// the other threads, and the suite skips that test saying so. Run does the
// same with PollSetHost for an app-driven backend (evlib.CapAppDriven),
// whose Backend part checks that Poll returns evlib.ErrAppDriven. Foreign
// mode adds the external-poll tests (checklist 10, 13, 26, 27, 33) and
// checks on every ServiceFD call that Revents of a handled fd is zeroed and
// left alone otherwise, and at every UNLOCK_POLL that the host's watch set
// already matches the poll-fd callbacks.
//
// Each test's comment names the items of the lws event-lib conformance
// checklist it covers. Not covered: attaching to a foreign loop of a
// backend's own type outside RunHost (the suite only checks that a
// foreign loop of an unknown type is refused).
//
// The completeness tests check, on every backend: SMP placement and
// exclusivity (34: accepted connections and AdoptFD from a callback, placed
// by load or pinned with core.OnThread, each serviced by its own thread
// only; in foreign mode with a loop per thread), raw pipe, FIFO and UDP
// lifecycles (36), the fd-limit accept stop and the EMFILE pause (24, 25;
// the EMFILE test lowers RLIMIT_NOFILE in a child process running that one
// test), fds far beyond the fd table (25: that same far fd, adopted by a
// context whose Info.FDLimit is 16), Attach (22), the close policy (37) and
// client connections.
//
// Every callback of every core-level test goes through a recorder that
// checks the lifecycle and poll-fd invariants of the conformance checklist
// as they happen (exactly one RAW_ADOPT and one RAW_CLOSE per connection,
// nothing after RAW_CLOSE, PROTOCOL_INIT first and PROTOCOL_DESTROY last,
// LOCK/ADD/DEL/CHANGE/UNLOCK sequences, never two goroutines in callbacks
// at once).
//
// The suite is deterministic: it synchronizes with channels, Thread.Post
// and the core's counters, never with a sleep in place of a signal, and it
// asserts no upper bound on any duration (only lower bounds: a timer never
// fires early). Its only time limit is a hang guard of ten seconds per
// wait, which a conforming backend never comes near; a Poll of the
// "Backend" part that does not return within it ends the test binary with
// a panic that says which Poll, as nothing else can end a call on the
// test's goroutine. (The back-pressure
// test calls a peer blocked once it stayed unwritable for 100ms while the
// loop ran; a slow backend can only make it pass, not fail.) Checks
// that need something the machine lacks (an IPv6 loopback, a capability
// the backend declares it lacks) are skipped with a message saying why.
// The suite runs its subtests one after the other, because it counts the
// process' descriptors and goroutines; do not call it from a parallel
// test.
package conformance
