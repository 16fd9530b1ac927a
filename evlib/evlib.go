// Package evlib is the contract between plugloop's core state machine and an
// event-loop backend: plugloop's version of libwebsockets' event_loop_ops.
//
// A backend watches file descriptors for one service thread and reports what
// became ready. The core owns everything else: connections, buffers, timers,
// flow control, accept, and (for readiness backends) every read and write
// system call. Three styles of backend fit the one contract:
//
//   - Readiness backends (poll, epoll, kqueue, gnet's poller) report kernel
//     readiness; the core reads and writes the fd itself.
//   - Buffered-rx backends (cloudwego/netpoll) have already read the bytes:
//     they report "readable" when their buffer holds data, synthesize
//     "writable", and implement [IO] so the core's reads come from their
//     buffer. They declare [CapBufferedRx].
//   - App-driven backends (the foreign mode) never wait: the application owns
//     the poll loop, learns what to watch from the core's ADD/DEL/CHANGE_MODE
//     poll-fd callbacks and hands events back. They declare [CapAppDriven];
//     the core never calls their Poll.
//
// A completion backend (io_uring's receives) takes the buffered-rx style:
// it keeps a receive submitted for each stream, reports Readable when one
// completed, and hands the bytes over in [IO.Read]; its [IO.Write] may
// write directly, as the netpoll adapter does, or take the bytes into a
// bounded buffer of its own and report Writable once it drained; its Poll
// waits for a completion. plugloop ships no such backend, but the netpoll
// adapter runs this path under the whole conformance suite.
//
// Every method of [Backend] is called on the service thread's goroutine, one
// call at a time, except [Waker.Wake], which any goroutine may call.
//
// A backend may report from other goroutines instead (evlib_netpoll's
// per-connection readers, woken by netpoll, do): while the service
// goroutine is blocked in Poll or Loop, the backend may let one other
// goroutine at a time call [Sink.Ready] and, in Loop, [Passer.Pass],
// provided something like a mutex orders each such goroutine's calls after
// everything the previous holder did and before the service goroutine goes
// on. The calling goroutine is then the service thread's goroutine for the
// duration: the core's callbacks run on it, and the core calls the
// backend's methods from it.
package evlib

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// Events is a set of readiness conditions. As an interest it holds Readable
// and/or Writable; as a report it may also hold Hangup and Error, which a
// backend adds to its report of an fd whenever its mechanism says they hold,
// whether Readable or Writable is there or not (like poll(2) does), and
// reports for an fd watched with interest 0 where it declares
// CapHangupWithoutInterest.
type Events uint32

const (
	// Readable: a read would not block (data, EOF, or a pending accept).
	Readable Events = 1 << iota
	// Writable: a write would not block.
	Writable
	// Hangup: the peer hung up (POLLHUP, EPOLLHUP, EV_EOF on both filters).
	// The core learns from Hangup and Error, not from a read, that a
	// paused connection's peer is gone (it then reads the input left
	// before it closes) and that a pipe or FIFO has ended (RAW_CLOSE_FILE):
	// a backend whose mechanism reports only readable and writable, as
	// select(2) does, asks the kernel another way (examples/selectbackend
	// asks poll(2) about the fds select found ready).
	Hangup
	// Error: the fd has a pending error (POLLERR, EPOLLERR, EV_ERROR).
	Error
)

// String returns the set as "R|W|HUP|ERR" style text.
func (e Events) String() string {
	if e == 0 {
		return "0"
	}
	s := ""
	for _, x := range []struct {
		bit  Events
		name string
	}{{Readable, "R"}, {Writable, "W"}, {Hangup, "HUP"}, {Error, "ERR"}} {
		if e&x.bit != 0 {
			if s != "" {
				s += "|"
			}
			s += x.name
		}
	}
	if rest := e &^ (Readable | Writable | Hangup | Error); rest != 0 {
		if s != "" {
			s += "|"
		}
		s += fmt.Sprintf("%#x", uint32(rest))
	}
	return s
}

// Kind tells a backend what an fd is, for backends that must treat some fds
// differently (a buffered-rx backend must not read a listener).
type Kind uint8

const (
	// KindStream is a connected stream socket (TCP, unix).
	KindStream Kind = iota
	// KindListener is a listening socket: readable means accept won't block.
	KindListener
	// KindDatagram is a UDP or unixgram socket.
	KindDatagram
	// KindFile is a pipe, FIFO, tty or other non-socket descriptor.
	KindFile
	// KindWake is the core's own cross-goroutine wakeup fd (an eventfd or
	// the read end of a pipe). It is watched for Readable only.
	KindWake
)

// Backend is one service thread's event loop. The core calls every method on
// the service thread's goroutine, never concurrently.
//
// Interest is level-triggered from the core's point of view: as long as an
// fd is ready for something in its interest, every Poll reports it again.
// The core keeps interest changes lazy, so a backend need not cache them, but
// each method must be idempotent in effect: Modify to the current interest
// makes no system call, Remove of an fd that is not watched returns nil.
type Backend interface {
	// Add starts watching fd with interest ev. The core calls it once for
	// every fd it adopts, before it can expect any event for that fd (lws:
	// sock_accept followed by io(START|READ)). ev may be 0 (registered, but
	// not interested in anything yet); Hangup and Error are still reported
	// where the mechanism can, which the backend declares with
	// CapHangupWithoutInterest. Adding an fd that is already watched returns
	// an error wrapping ErrExist; adding a negative fd, one above
	// math.MaxInt32 (a system call would truncate it to another fd) or one
	// that is not open returns an error wrapping ErrBadFD, and grows no
	// table for it. A poll(2) backend has to ask (fcntl F_GETFD): the
	// kernel says POLLNVAL only at the next wait. An fd beyond what the
	// backend's mechanism can watch (select(2)'s FD_SETSIZE) is ErrBadFD
	// too: the core then refuses it (an adoption returns the error; a
	// connection it accepted is closed, and the log says why).
	Add(fd int, kind Kind, ev Events) error

	// Modify sets the interest of a watched fd to ev (lws: io(START|STOP)).
	// The core calls it only when the interest really changes. Modifying
	// an fd that is not watched returns an error wrapping ErrNotWatched.
	Modify(fd int, ev Events) error

	// Remove stops watching fd (lws: wsi_logical_close/destroy_wsi). The
	// core calls it before it closes fd, and never dispatches an event for
	// a removed fd, so events already collected for it may be dropped
	// (also when Remove is called from the Sink during a Poll's reports);
	// no later Poll reports it. An fd removed during a Poll's reports stays
	// open until that Poll returns (in Loop, until the next Pass; see
	// FDCloser), so its number cannot be added again within the batch: the
	// backend need not tell the events it collected for it from those of
	// a new fd of the same number.
	Remove(fd int) error

	// Poll waits at most timeout for readiness (timeout < 0: no limit;
	// 0: do not block) and reports every ready fd to the Sink given in
	// Config, then returns how many it reported. It returns early, with no
	// error, when woken (see Waker and KindWake). App-driven backends
	// return ErrAppDriven. An interrupted wait (EINTR) is an empty one, not
	// an error: any other error means the backend cannot wait, and ends
	// the core's Run (core.ErrBackend). The order of the reports is the
	// backend's; plugloop's report in fd order, which served a thousand
	// connections with about 10% less CPU than the kernel's order. A
	// positive timeout finer than the mechanism's resolution is rounded up,
	// never down to 0: the core would spin until its timer is due. A Poll
	// that may block adds to Config.Counters.Waits first (see Counters).
	// It does well to yield first (runtime.Gosched), whatever system call
	// it blocks in, as plugloop's own backends and gnet's loop do: on
	// Linux the core's reads and writes are raw system calls, so a loop
	// that makes no other call never enters the scheduler, and once the
	// runtime has preempted it by force it hands the P away and wakes
	// another thread at every blocking wait.
	Poll(timeout time.Duration) (int, error)

	// Close releases what the backend created. It never closes fds the
	// core added, nor a loop the application lent through Config.Foreign.
	// It is idempotent. After it Add, Modify and Poll return an error
	// wrapping ErrClosed, and Remove returns nil.
	Close() error
}

// Waker is implemented by a backend that has its own cross-goroutine wakeup
// (a channel, an eventfd of its own). Without it the core creates a
// KindWake fd and adds it like any other fd, which suits readiness backends
// and makes the wakeup visible to a foreign loop.
type Waker interface {
	// Wake makes a Poll in progress (or the next one) return promptly.
	// It is the one method any goroutine may call, also concurrently with
	// Poll and Close; after Close it must be a harmless no-op.
	Wake() error
}

// Clock is implemented by a backend that keeps time of its own: a simulated
// backend with a fake clock, so that tests of timers and timeouts run
// instantly and give exact results. The core asks once, when it creates the
// service thread; with a Clock, everything it times (timers, connection
// timeouts, the idle, close and connect timeouts, the rest after a failed
// accept) is measured by Now instead of the system's monotonic clock, and
// the timeouts it passes to Poll and returns from Passer.Pass are durations
// on it. Without one the core reads the system's clock as before, for the
// cost of a nil check.
type Clock interface {
	// Now returns the time elapsed since an arbitrary origin of the
	// backend's choosing. It is monotonic: it never goes backwards. Like
	// the Backend methods, it is called from whichever goroutine services
	// the thread at the time, never concurrently by the core.
	Now() time.Duration
}

// Looper is implemented by a backend whose event library must own the wait
// loop (lws' run_pt): gnet's Polling, for one, never returns between
// batches. The core's Run then calls Loop once instead of calling Poll in a
// loop; single passes (Thread.Service) still use Poll.
type Looper interface {
	// Loop runs the library's loop on the calling goroutine. It reports
	// ready fds to p (Ready) and calls p.Pass after them (after each fd,
	// or after each batch where the library shows batch ends), after a
	// wakeup (Waker.Wake), and once the duration Pass last returned has
	// elapsed. It returns nil once Pass reports stop.
	Loop(p Passer) error
}

// FDCloser is implemented by a backend that decides when a descriptor the
// core is done with is closed: the core then calls CloseFD instead of
// close(2) for every fd it closes, after Remove. A backend whose library
// hands the core the events of one wait one at a time, with a pass after
// each (gnet's Polling), closes it only once the rest of that batch was
// delivered: closed at once, its number could go to an fd opened later in
// the batch (an accept, an adoption), and the batch's events for the old
// fd to the new one. CloseFD is called on the goroutine servicing the
// thread; Close closes whatever is still pending.
type FDCloser interface {
	CloseFD(fd int)
}

// AcceptedAdder is implemented by a backend that must ask a stream what
// became of it before it was added (whether it is connected yet, how much
// of its input someone read already) and can skip those questions for a
// stream the core has just accepted, which is connected and unread. The
// core then calls AddAccepted instead of Add(fd, KindStream, ev) when it
// first watches a stream one of its listeners accepted, before anything
// reads it; every other Add of a stream, a re-add included, is an Add.
type AcceptedAdder interface {
	// AddAccepted is Add(fd, KindStream, ev) for a stream that accept(2)
	// has just returned: connected when it was accepted, and every byte
	// it received is still in the kernel's queue.
	AddAccepted(fd int, ev Events) error
}

// Passer is the core side of a Looper.
type Passer interface {
	Sink
	// Pass runs what is due apart from fd readiness — wakeups, forced
	// service, timers, deferred closes — and says when it wants to be
	// called again: next == 0 at once, next > 0 within that long, next < 0
	// only after an fd event or a wakeup. stop means Loop must return.
	Pass() (next time.Duration, stop bool)
}

// IO is implemented by buffered-rx backends ([CapBufferedRx]): the core calls
// Read instead of read(2) when an fd is reported Readable, Write instead of
// write(2) and Shutdown instead of shutdown(2). Read and Write follow
// read(2)/write(2): (0, nil) from Read is end of stream; "would block" is
// reported as an error wrapping ErrWouldBlock, after which the backend
// reports Writable (or Readable) when that changed.
type IO interface {
	Read(fd int, p []byte) (int, error)
	Write(fd int, p []byte) (int, error)
	// Shutdown shuts the write side of a stream down, as shutdown(2) with
	// SHUT_WR does (the core's graceful close), so that the backend can
	// tell the peer's end of stream that follows from a reset.
	Shutdown(fd int) error
}

// Sink is the core side of the contract: where a backend reports readiness.
type Sink interface {
	// Ready reports that fd is ready for ev. It runs the core's handling
	// (reads, accepts, user callbacks) before it returns, and may call
	// Modify, Add or Remove on the backend from inside.
	Ready(fd int, ev Events)
}

// Config is what the core hands a backend at creation.
type Config struct {
	// Sink receives readiness reports. Never nil.
	Sink Sink
	// Counters is where the backend counts its own system calls. Never nil.
	Counters *Counters
	// Thread is the index of the service thread (lws' tsi).
	Thread int
	// MaxFDs is the highest fd number plus one the core will add, a sizing
	// hint for fd-indexed tables.
	MaxFDs int
	// Foreign, if not nil, is a loop the application owns and lends to this
	// service thread (an epoll fd, a *netpoll.Poller...). Backends that do
	// not declare CapForeignLoop reject it.
	Foreign any
	// Logger is never nil.
	Logger *slog.Logger
}

// Counters are per-service-thread statistics. Any goroutine may read them.
// The backend adds to Waits and InterestChanges, and a backend with its own
// Waker to Wakes (the core counts the signals of its own wake fd); the core
// adds to the rest. They count system calls, which is what the benchmark
// reads from them: Wakes the signals actually sent, not the Wake calls
// that found one pending; a call that is neither a wait nor an interest
// change (examples/selectbackend's non-blocking poll(2) for hang-ups) in
// none of them.
//
// Waits is more than a statistic: a Poll that may block (timeout != 0)
// adds to it before it blocks, and a Looper adds one before it blocks
// after a Pass; a wait that cannot block need not count. The conformance
// suite learns from a wait counted after a function posted to the thread
// (core.Thread.Post) ran that the loop is idle: a backend that counts its
// waits after they return, or not at all, would fail every core-level
// test that waits for an idle loop on the suite's hang guard, so the
// suite's Backend part checks the rule first.
type Counters struct {
	Waits           atomic.Uint64 // epoll_wait, poll, kevent... calls
	InterestChanges atomic.Uint64 // epoll_ctl, kevent changes... calls
	Wakes           atomic.Uint64 // cross-goroutine wakeups sent (eventfd writes)
	Reads           atomic.Uint64 // read(2), recvfrom(2) or backend Read calls
	Writes          atomic.Uint64 // write(2) or backend Write calls
	Accepts         atomic.Uint64 // accept(2) calls
	Closes          atomic.Uint64 // close(2) of connection fds
	Dispatches      atomic.Uint64 // user callbacks run
	ForcedServices  atomic.Uint64 // passes that ran forced service
	TimersFired     atomic.Uint64 // timers (and timeouts) that fired
	Splices         atomic.Uint64 // splice(2) calls of relays (Conn.RelayTo)
	Relayed         atomic.Uint64 // bytes relays moved to their targets
}

// Errors shared by backends and the registry. Test with errors.Is.
var (
	// ErrExist: the fd is already watched.
	ErrExist = errors.New("evlib: fd already watched")
	// ErrNotWatched: the fd is not watched by this backend.
	ErrNotWatched = errors.New("evlib: fd not watched")
	// ErrBadFD: the fd is negative, closed, or beyond the backend's limit.
	ErrBadFD = errors.New("evlib: bad file descriptor")
	// ErrClosed: the backend was closed.
	ErrClosed = errors.New("evlib: backend closed")
	// ErrAppDriven: the backend never waits; the application's loop does.
	ErrAppDriven = errors.New("evlib: backend is driven by the application's loop")
	// ErrWouldBlock: an IO call would block.
	ErrWouldBlock = errors.New("evlib: operation would block")
	// ErrUnknown: no backend of that name or flag exists.
	ErrUnknown = errors.New("evlib: unknown event-loop backend")
	// ErrUnavailable: the backend exists but cannot run here (wrong OS, not
	// linked into this program).
	ErrUnavailable = errors.New("evlib: event-loop backend unavailable")
	// ErrForeignUnsupported: Config.Foreign was set for a backend that
	// cannot attach to an application's loop, or was of the wrong type.
	ErrForeignUnsupported = errors.New("evlib: backend cannot use this foreign loop")
)
