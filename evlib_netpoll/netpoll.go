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
//     and the buffer, to the backend.)
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
// # No rx back-pressure, and its bound
//
// netpoll's poller keeps reading from the kernel into its own buffer
// whatever plugloop's interest is, so the backend does not declare
// evlib.CapRxBackpressure: pausing a connection's rx does not push back on
// its peer, the bytes pile up in netpoll's buffer instead of the kernel's.
// The backend bounds that pile at MaxPausedRx bytes per connection, checked
// every PausedRxCheck while a connection holds unread input without Readable
// interest: past the bound it reports Error, and the next Read returns an
// error wrapping ENOBUFS, so the core closes the connection (RAW_CLOSE with
// that error) instead of buffering without limit. (Taking the connection
// back from netpoll instead, so that TCP pushes back from then on, cannot
// be done without losing bytes: netpoll's poller may still be reading when
// its connection is closed, and the close drops the buffer.) The check is periodic, so
// the buffer may overshoot by what the peer manages to send in one
// PausedRxCheck interval (on loopback, tens of megabytes at most). A paused
// connection still learns at once that its peer hung up or reset: netpoll
// calls OnDisconnect as soon as its poller saw it (after it read all input),
// and the backend reports Hangup whatever the interest, so the core moves
// the input into its own buffer and closes once it was consumed or after
// Info.CloseTimeout. A reset is told from an orderly close by the socket's
// state (SO_ERROR, or TCP state CLOSE), since netpoll keeps the error.
package evlib_netpoll

import (
	"time"

	"github.com/plugloop/plugloop/evlib"
)

// Name is the backend's registry name.
const Name = "netpoll"

// MaxPausedRx is how many bytes netpoll may hold for a connection whose rx
// is paused before the backend fails the connection (see the package
// documentation).
const MaxPausedRx = 4 << 20

// PausedRxCheck is how often a paused connection's buffered input is
// compared with MaxPausedRx.
const PausedRxCheck = 10 * time.Millisecond

func init() {
	d := descriptor()
	d.Name, d.Flag, d.Priority = Name, evlib.FlagNetpoll, 1
	if err := evlib.Register(d); err != nil {
		panic(err)
	}
}
