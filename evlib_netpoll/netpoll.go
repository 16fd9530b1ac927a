// Package evlib_netpoll is plugloop's buffered-rx backend on
// github.com/cloudwego/netpoll (v0.7.2), cgo-free, for Linux.
//
// Import it for its side effect of registering the backend "netpoll"
// (evlib.FlagNetpoll). It has a low priority and is never the default:
//
//	import _ "github.com/plugloop/plugloop/evlib_netpoll"
//
// # How it maps the contract
//
// It uses only netpoll's exported Connection API, never a linkname, and
// never touches netpoll's process-wide settings (Configure, SetNumLoops,
// SetRunner, DisableGopool): an application that already uses netpoll keeps
// its pollers and settings, and plugloop's connections simply join them.
//
//   - The service goroutine waits (in Poll, or in Loop when Run drives the
//     thread) in a select over a post queue (filled by netpoll's
//     goroutines and by helper goroutines), a wake channel (the
//     evlib.Waker: a non-blocking send, harmless after Close) and one
//     time.Timer. Poll(0) never blocks.
//   - A stream (KindStream) is handed to netpoll as a dup of the core's fd
//     (netpoll.NewFDConnection): netpoll reads the kernel into its buffer
//     on its poller goroutine, and closes the dup when the backend closes
//     the connection; the core keeps and closes the original.
//   - Each stream has a reader goroutine, parked in netpoll's Peek until
//     the buffer holds input. (Not netpoll's OnRequest: that starts a task
//     on netpoll's goroutine pool for every burst of input, a closure, a
//     pool task and a new goroutine each time, and once the task ends
//     netpoll may drop unread input on a hang-up. A parked reader is woken
//     by one channel send, and with no OnRequest netpoll leaves the close,
//     and the buffer, to the backend.) A reader whose stream was removed
//     waits for the next stream to be added, while no more than 64 others
//     wait so, and ends when the backend closes: the callbacks that run on
//     it (see below) need a deeper stack than a new goroutine's, which
//     would otherwise grow, a copy, for every connection.
//   - The reader does not hand the input over to the service goroutine:
//     while that goroutine waits, it takes the thread's turn (a mutex the
//     service goroutine holds at all other times), reports Readable to the
//     core and, in Loop, runs the pass that follows (the callbacks, the
//     writes, forced service), right there. Two goroutine hand-offs per
//     round trip less; the price is that callbacks run on the readers,
//     one at a time per thread and in order, so the backend declares
//     evlib.CapLibraryGoroutines. In Poll a reader reports an fd at most
//     once per call, and the caller runs the pass.
//   - Input the core does not read at once (rx paused, or more than one
//     read's worth) is held: the reader parks until IO.Read empties the
//     buffer, and the fd is reported Readable while it has Readable
//     interest: level-triggered, as the contract wants. netpoll's
//     OnDisconnect posts Hangup as soon as its poller saw the hang-up
//     (after it read all input), reported as Readable|Hangup so the core
//     reads the rest and then end of stream.
//   - IO.Read copies from netpoll's buffer (Next + Release): it returns an
//     error wrapping evlib.ErrWouldBlock while the buffer is empty and the
//     connection alive, and (0, nil) once it is empty and the peer closed.
//   - IO.Write is a raw write(2) on the core's own fd (a raw system call,
//     like the core's own: the scheduler need not hear of a write that
//     cannot block, and telling it made sysmon retake the P). Writable is
//     synthesized (no system call) while the fd is not known to be
//     blocked; once a write met EAGAIN or was short, a helper goroutine
//     waits for real writability (see below) and posts Writable.
//   - Listeners, pipes (KindFile, so the backend declares evlib.CapFiles)
//     and datagram sockets cannot go through netpoll (it would accept or
//     read them itself). They, and blocked writers, are watched by short
//     helper goroutines that wait in the Go runtime's own poller on a dup
//     of the fd (os.NewFile + RawConn), test the real state with a
//     zero-timeout poll(2), post what they found and exit. A new one is
//     started after the core handled the report while the interest
//     remains: level-triggered again. Remove closes the dup, which ends a
//     waiting helper at once, so no goroutine outlives its fd. The runtime
//     poller parks a goroutine, not an OS thread, which a blocking poll(2)
//     per connection would cost.
//
// # Rx back-pressure and read-ahead
//
// netpoll's poller reads from the kernel into its own buffer whatever
// plugloop's interest is, so pausing a connection's rx at first only stops
// RAW_RX, and a core that falls behind finds netpoll far ahead of it. The
// backend takes a connection out of netpoll's poller (netpoll's Detach,
// which waits for a read in progress and keeps the buffer and the fd) when
// its rx stays paused for DetachDelay, or when netpoll holds more than
// MaxReadAhead bytes the core has not read. From then on the kernel keeps
// what arrives and TCP pushes back on the peer, so the backend declares
// evlib.CapRxBackpressure. The core reads what netpoll held, then the
// kernel directly, as on a readiness backend, until it finds the kernel
// empty with rx on: it has caught up, and the stream goes back to netpoll
// as a new connection on a new dup. (Going back as soon as netpoll's
// leftover was read would let netpoll's eager reads pile up again what the
// kernel holds, for a consumer that stays slow.)
//
// The check runs where the connection's reader holds the thread's turn,
// and, while the reader is parked with input held (rx was paused when the
// input came, and the core has not read it all since), at every read the
// core makes of that input: a core that reads steadily but more slowly
// than netpoll never empties the buffer, so the parked reader would never
// look again, and a proxy's rx pauses and resumes faster than DetachDelay.
// So netpoll holds for one connection what it read up to then:
// MaxReadAhead, plus what it reads until the next look (while the reader
// waits for a thread and the turn, or between two of the core's reads:
// other connections' callbacks run meanwhile), plus, after a pause, what
// the peer sends in DetachDelay. netpoll's poller gives up its thread only
// when a wait finds no event, so with one P and peers that keep sending,
// the next look waits for the Go scheduler to preempt it: tens of
// milliseconds. That is no fixed number of bytes, but it is paid
// once per stretch of falling behind, not again for every pause while the
// consumer stays slow; bench/RESULTS.md gives measured figures. A pause shorter
// than DetachDelay, as in a busy pipelined stream, costs a timer; a longer
// one, or a core that far behind, pays the detach and the re-attach (a few
// system calls and netpoll's connection setup) once.
//
// A paused connection still learns at once that its peer hung up or reset:
// netpoll calls OnDisconnect as soon as its poller saw it (after it read
// all input), and while the connection is out of netpoll a helper
// goroutine waits for it in the runtime poller. Either way the backend
// reports Hangup whatever the interest, so the core moves the input into
// its own buffer and closes once it was consumed or after
// Info.CloseTimeout. netpoll's read takes a reset's error and keeps it, so
// the kernel then says end of stream; the socket still tells a reset from
// an orderly close: SO_ERROR, or TCP state CLOSE, which an open write side
// reaches only by a reset. Once the write side was shut down (Conn.CloseWrite,
// GracefulClose), the peer's FIN leads to CLOSE too, and what tells them
// apart is the sequence space the kernel received (tcpi_bytes_received),
// which counts a FIN: one more than the data read for an orderly end, none
// for a reset. For that the backend counts what Read returns, and at Add
// asks a TCP stream what it received and still holds (one getsockopt, three
// once it has received anything), so that what was read before is known. A
// stream the core has just accepted comes through AddAccepted
// (evlib.AcceptedAdder) instead: nothing read it, and nothing is asked.
// Where the counts cannot tell (a kernel before 4.1, urgent data), a stream
// closed after its own write side reads as ended in order. A unix-domain
// stream keeps nothing to ask: once netpoll's read took its reset (its peer
// closed with input unread), SO_ERROR is clear and there is no state or
// count, so it ends as if closed in order, with io.EOF. The backend lacks
// evlib.CapUnixReset for that, and the conformance suite checks it does.
//
// Once netpoll has seen a stream's end it says nothing more of it: a reset
// that follows the peer's FIN is news to no one. So once that end was
// reported to a stream watched with interest 0 (a half-open connection,
// core.Protocol.AllowHalfOpen, after RAW_RX_END), a helper waits in the
// runtime poller on a dup for POLLHUP or POLLERR alone, as a paused file's
// does, and the backend reports Hangup or Error for it: it declares
// evlib.CapHangupWithoutInterest, and such a connection learns of its
// peer's reset at once. The peer's FIN with the local write side open
// raises neither, so the helper sleeps until the reset, the local
// CloseWrite (the stream is then done) or Remove, which closes the dup and
// ends it; a write that blocked and drained may wake it once, for one
// poll(2). The price is one goroutine and one more dup per such
// connection, from its end on, none per message.
//
// # One P
//
// With GOMAXPROCS=1 two things the scheduler does under load would stall
// the backend, and it works around both.
//
// The runtime polls its own poller, where the helpers wait, only when the
// run queue is empty or every 10 ms from its monitor thread, and netpoll's
// poller, which yields after every round, keeps the queue from emptying.
// So every 64 passes the turn's holder asks poll(2) itself about the fds
// whose helpers wait, one system call for all, and takes what it finds as
// the helpers would. Beside 50 busy connections, a new connection's dial
// and first echo took 5 ms at the median before, 0.35 ms after, as on the
// epoll backend.
//
// After each round netpoll's poller yields and then blocks in epoll_wait.
// Every 61st schedule the scheduler takes the global run queue first, where
// the yield put the poller, so the poller can run again while readers it
// woke are still queued, and it takes the P into its system call: they
// wait until an event wakes it or the monitor thread takes the P back,
// after up to 10 ms and more, and their peers wait on them. While the
// backend is busy, a timerfd given to netpoll as a connection (the tick)
// expires every millisecond, which ends such a wait: the bench's arrival
// scenario saw the whole server stand still for 10 to 20 ms several times
// a second before (a new connection's p99 15 ms), and 0.5 to 1.3 ms
// after. The tick stops after eight expiries without a pass, and costs one
// file descriptor per service thread.
//
// The tick's short waits also keep the runtime's monitor from ever
// finding netpoll's poller blocked long enough to take the P back, which
// had been what let the runtime poll its own poller when passes are few,
// as under connection churn, where every connection is new: there the
// rate fell from about 15,000 connections a second to 5,000 to 11,000,
// the clients waiting on accepts. So while passes keep coming (in each of
// the last two periods), every expiry also looks ahead itself, if no pass
// holds the turn, and wakes the service thread when it found something;
// churn is back level with netpoll's own server. An expiry with no pass
// since the one before does not look, nor does one after a burst of
// passes shorter than a period, so an idle backend makes at most one
// poll(2) after its last pass.
//
// # netpoll's log
//
// netpoll writes to its own logger, standard error unless the application
// said otherwise, for instance a line "NETPOLL: readall(fd=N)=K before
// close: connection reset by peer" whenever a peer resets a connection
// that netpoll was reading. The logger is one of netpoll's process-wide
// settings, which the backend leaves alone. An application that does not
// want those lines sets netpoll's logger once, before its first
// connection, as netpoll asks of all its settings:
//
//	netpoll.Configure(netpoll.Config{LoggerOutput: w})
package evlib_netpoll

import (
	"time"

	"github.com/plugloop/plugloop/evlib"
)

// Name is the backend's registry name.
const Name = "netpoll"

// DetachDelay is how long a connection may stay paused while netpoll goes
// on reading it, before the backend takes it out of netpoll's poller so
// that the kernel pushes back on the peer (see the package documentation).
const DetachDelay = 2 * time.Millisecond

// MaxReadAhead is how many bytes netpoll may hold for a connection that the
// core has not read before the backend takes it out of netpoll's poller
// (see the package documentation).
const MaxReadAhead = 1 << 20

func init() {
	d := descriptor()
	d.Name, d.Flag, d.Priority = Name, evlib.FlagNetpoll, 1
	if err := evlib.Register(d); err != nil {
		panic(err)
	}
}
