//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/evmask"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{
		Caps: evlib.CapBufferedRx | evlib.CapRxBackpressure | evlib.CapOwnWaker | evlib.CapFiles | evlib.CapLibraryGoroutines |
			evlib.CapHangupWithoutInterest,
		// netpoll's dup of every stream, the helpers' of every other fd. A
		// stream whose write is blocked, that is out of netpoll, or that
		// ended and has no interest (half open, watched for its reset),
		// holds the helpers' too while that lasts (see releaseFile).
		DupsPerFD: 1,
		New:       New,
	}
}

// What a post says.
const (
	postHup      = iota // netpoll closed the stream's connection
	postRawRead         // a helper found the fd readable (ev says how)
	postRawWrite        // a helper found the fd writable (ev says how)
	postWatchEnd        // the hang-up helper of a detached stream ended (ev: Hangup if it saw one)
)

type post struct {
	e    *entry
	what uint8
	ev   evlib.Events
	gen  uint32 // postWatchEnd: the helper's entry.hupGen
}

// entry is one watched fd. Its plain fields belong to the holder of the
// turn (Backend.turn); other goroutines touch only the channels, gone,
// watchHup, peek, endMu and what it guards, and the netpoll connection's
// atomic Len.
type entry struct {
	fd       int
	kind     evlib.Kind
	interest evlib.Events

	nc    netpoll.Connection // streams: netpoll's connection on a dup (nil while detached)
	ncFD  int                // nc's dup, netpoll's to close
	r     netpoll.Reader     // nc's reader
	ack   chan struct{}      // sends a parked reader back to netpoll's Peek
	rearm chan struct{}      // restarts a parked reader's DetachDelay (rx paused again)
	done  chan struct{}      // closed on Remove: releases everything
	gone  atomic.Bool        // removed (read by helpers)

	// A stream taken out of netpoll's poller (see detach): the core reads
	// what netpoll's buffer still holds (held; its dup, ours to close, is
	// heldFD), then the kernel.
	held     netpoll.Reader
	heldFD   int
	detached bool
	watchHup atomic.Bool // the hang-up helper is still wanted (read by it)
	hupGen   uint32      // counts hang-up helpers let go (see releaseFile)

	file *os.File // dup for the helpers, made when first needed
	rc   syscall.RawConn

	// A file's read helper also watches it while rx is paused, for its
	// end: a pipe's write end learns that its reader closed only so
	// (POLLERR). watchIn tells the helper whether input counts too (read
	// by it); endSeen stops that watch once the end was posted. A helper
	// that input woke while it did not count waits again for the next
	// input's edge only: inMissed says input may be waiting that the helper
	// out will not report, so the turn asks the fd itself (see arm).
	watchIn  atomic.Bool
	endSeen  bool
	inMissed bool

	// How the stream ended, as the socket said when that was first asked
	// (see snapEnd); endMu orders netpoll's goroutines and the core's, and
	// keeps Remove from letting the core close the fd while one of them
	// asks it (see hungUp).
	endMu  sync.Mutex
	endSay *sockEnd

	// What tells the peer's FIN from its reset once both left the socket
	// in TCP state CLOSE (see verdict): the bytes Read returned, and what
	// the kernel had counted as received at Add that no Read will return.
	rxRead uint64

	// When Read gives netpoll back what the core took. netpoll sizes a
	// connection's new nodes by the most input it saw at once: the most
	// it held unread, or, at a Release that found the buffer empty, all
	// its nodes up to the read position. Once that passes a page
	// (netpollPage), every Release that finds the buffer empty puts a
	// fresh node at the tail, which the next input fills. Released at
	// once, input that ever crossed from a full node into the next would
	// make every message take a node and its memory from netpoll's pools
	// and give them back. So Read releases what earlier reads took before
	// it takes more, while input waits, and the node count never passes
	// a page: a node serves a page of messages, and an idle connection
	// keeps the node its last input came in, as netpoll keeps it anyway,
	// plus at most the one before. Once netpoll held more than a page
	// unread (bigNodes), its nodes are that large from then on, and Read
	// releases at once, netpoll's way, so an idle connection keeps none.
	bigNodes bool
	rx0      rxBase

	peek       sync.Mutex   // held by the reader while it waits in netpoll's Peek
	readHeld   bool         // input left after a report, to be reported Readable
	fresh      bool         // input the reader is reporting right now
	seen       uint64       // Backend.gen of the Poll a reader reported this in
	hup        bool         // the peer hung up (seen by netpoll, or by a detached stream's helper)
	hupShown   bool         // Hangup reported without Readable interest
	fail       error        // the stream cannot go on (a failed re-attach): Read returns it
	connecting bool         // a stream not connected yet: not netpoll's
	shutWR     bool         // the core shut the write side down
	failShown  bool         // Error reported for fail
	rawReady   evlib.Events // what helpers found, not yet reported
	waitR      bool         // a read helper is out
	waitW      bool         // a write helper is out
	waitH      bool         // a hang-up helper is out
	blocked    bool         // the last write met EAGAIN (or was short)
	queued     bool         // in Backend.cand
	inHelped   bool         // in Backend.helped
	removed    bool
}

// Backend serves one service thread.
//
// The turn is what makes the readers cheap: whoever holds it may call the
// sink. The service thread holds it except while it waits in Poll or Loop;
// then a reader with input takes it and lets the core read, run the
// callbacks and (in Loop) a whole pass, right there on the reader, instead
// of handing the input to the service goroutine and waiting for it to come
// back. The turn's mutex gives each holder everything the previous
// one did.
type Backend struct {
	sink    evlib.Sink
	ctr     *evlib.Counters
	turn    sync.Mutex
	passer  evlib.Passer // set while Loop runs
	inline  int          // reports readers made during Poll's wait
	gen     uint64       // counts Polls
	timerAt time.Time    // when the timer fires; zero: stopped

	fds    []*entry
	cand   []*entry // entries that may have something to report
	spare  []*entry
	closed bool
	timer  *time.Timer
	wake   chan struct{}
	kick   chan struct{}
	// Idle reader goroutines wait on handoff for a stream to read, or
	// for quit (closed by Close); idle counts them.
	handoff chan *entry
	quit    chan struct{}
	idle    atomic.Int32
	mu      sync.Mutex
	posts   []post
	pspare  []post

	tick ticker // wakes netpoll's poller while busy (see tick_linux.go)

	// Entries whose helper waits in the runtime poller, looked at
	// directly every lookEvery passes (see lookAhead).
	helped     []*entry
	helpedLive int // len(helped) when last pruned
	passes     int
	pfds       []unix.PollFd
}

// New creates the backend. Config.Foreign must be nil: netpoll's pollers
// are process-wide, so there is no loop to lend; plugloop's connections
// share whatever pollers the process' netpoll runs anyway.
func New(cfg evlib.Config) (evlib.Backend, error) {
	if cfg.Foreign != nil {
		return nil, fmt.Errorf("%w: netpoll's pollers are process-wide and shared already; got %T", evlib.ErrForeignUnsupported, cfg.Foreign)
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	b := &Backend{
		sink: cfg.Sink, ctr: cfg.Counters, timer: t,
		wake: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		handoff: make(chan *entry), quit: make(chan struct{}),
	}
	b.tick.fd, b.tick.look = -1, b.tickLook
	b.turn.Lock() // the service thread's, until it waits
	return b, nil
}

// Wake implements evlib.Waker. Any goroutine may call it, also after Close.
func (b *Backend) Wake() error {
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return nil
}

// post queues a report from another goroutine.
func (b *Backend) post(p post) {
	b.mu.Lock()
	b.posts = append(b.posts, p)
	b.mu.Unlock()
	b.kickWaiter()
}

// kickWaiter makes the service thread's wait return.
func (b *Backend) kickWaiter() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *Backend) lookup(fd int) *entry {
	if fd < 0 || fd >= len(b.fds) {
		return nil
	}
	return b.fds[fd]
}

func (b *Backend) enqueue(e *entry) {
	if !e.queued && !e.removed {
		e.queued = true
		b.cand = append(b.cand, e)
	}
}

// Add implements evlib.Backend.
func (b *Backend) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	return b.add(fd, kind, ev, false)
}

// AddAccepted implements evlib.AcceptedAdder: a stream just accepted is
// connected and nothing read it, so its input counts from 0 and Add's
// questions to the socket (up to three system calls) are not asked.
func (b *Backend) AddAccepted(fd int, ev evlib.Events) error {
	return b.add(fd, evlib.KindStream, ev, true)
}

func (b *Backend) add(fd int, kind evlib.Kind, ev evlib.Events, accepted bool) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if !sys.ValidFD(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
	}
	if b.lookup(fd) != nil {
		return fmt.Errorf("%w: fd %d", evlib.ErrExist, fd)
	}
	e := &entry{fd: fd, kind: kind, interest: ev & (evlib.Readable | evlib.Writable), done: make(chan struct{}), ncFD: -1, heldFD: -1}
	e.watchIn.Store(true)
	// A stream whose connect is still in progress is not netpoll's yet:
	// when the connect fails, netpoll's read would take the socket's
	// error, which the core needs to tell why. Helpers watch it until it
	// is connected (see connected).
	switch {
	case accepted:
		e.rx0 = rxBase{known: true}
	case kind == evlib.KindStream:
		// A TCP stream's state answers both questions at once: whether it
		// is connected, and from where it counts its input (rxBaseOf).
		if ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			// What getpeername(2) calls not connected.
			e.connecting = ti.State == sys.TCPSynSent || ti.State == sys.TCPClose
			e.rx0 = rxBaseOf(fd, ti)
		} else {
			e.connecting = !isConnected(fd)
		}
	}
	dup, err := dupFD(fd, kind == evlib.KindStream && !e.connecting)
	if err != nil {
		if errors.Is(err, unix.EBADF) {
			return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
		}
		return fmt.Errorf("dup fd %d: %w", fd, err)
	}
	if kind == evlib.KindStream && !e.connecting {
		if err := b.attach(e, dup); err != nil {
			return err
		}
	} else if err := e.openFile(dup); err != nil {
		return err
	}
	b.ctr.InterestChanges.Add(1)
	if fd >= len(b.fds) {
		fds := make([]*entry, max(fd+1, 2*len(b.fds), 64))
		copy(fds, b.fds)
		b.fds = fds
	}
	b.fds[fd] = e
	if e.interest&evlib.Writable != 0 {
		e.blocked = !sys.WritableNow(fd)
	}
	b.arm(e)
	b.enqueue(e)
	return nil
}

// isConnected reports whether a stream socket has a peer: false while a
// connect is in progress or after it failed.
func isConnected(fd int) bool {
	_, err := unix.Getpeername(fd)
	return !errors.Is(err, unix.ENOTCONN)
}

// connected hands a stream whose connect completed to netpoll. A failed
// connect stays with the helpers: the core reads its error (SO_ERROR) and
// closes it.
func (b *Backend) connected(e *entry) {
	if !e.connecting || !isConnected(e.fd) {
		return
	}
	e.connecting = false
	dup, err := dupFD(e.fd, true)
	if err == nil {
		err = b.attach(e, dup)
	}
	if err != nil {
		e.rawReady |= evlib.Error
		return
	}
	e.releaseFile() // or when its helpers end
}

// dupNext rotates the lowest number a stream's dup may get (see dupFD).
var dupNext atomic.Uint32

// dupFD duplicates fd. netpoll closes a stream's dup on its own goroutine,
// some time after Remove; in race builds its poller finds connections by
// fd number, so an event still in flight for a closed dup can reach a new
// connection that got the same number at once (a hang-up that is not its
// own). Rotating the lowest number through a window of dupWindow numbers
// above dupBase keeps a freed number unused for a while. Where the fd limit
// is lower, it falls back to the lowest free number.
func dupFD(fd int, stream bool) (int, error) {
	if stream {
		low := dupBase + int(dupNext.Add(1)%dupWindow)
		if d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, low); err == nil || !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EMFILE) {
			return d, err
		}
	}
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

const dupBase, dupWindow = 1024, 1024

// attach gives netpoll the dup of a stream and starts its reader.
func (b *Backend) attach(e *entry, dup int) error {
	if err := b.connect(e, dup); err != nil {
		return err
	}
	e.ack, e.rearm = make(chan struct{}, 1), make(chan struct{}, 1)
	select {
	case b.handoff <- e: // an idle reader takes it
	default:
		readerStarts.Add(1)
		go b.readers(e)
	}
	attaches.Add(1)
	return nil
}

// detacher is netpoll's connection's Detach: an exported method, though
// not of the Connection interface.
type detacher interface{ Detach() error }

// connect makes the dup of a stream netpoll's connection.
func (b *Backend) connect(e *entry, dup int) error {
	nc, err := netpoll.NewFDConnection(dup)
	if err != nil {
		// Not closing dup: its only failure, registering with netpoll's
		// poller, closes the connection and the dup with it. A second
		// close could hit a descriptor opened meanwhile.
		return fmt.Errorf("%w: fd %d: netpoll: %v", evlib.ErrBadFD, e.fd, err)
	}
	if _, ok := nc.(detacher); !ok {
		nc.Close()
		return fmt.Errorf("evlib_netpoll: fd %d: netpoll's connection (%T) has no Detach; plugloop needs netpoll v0.7.2", e.fd, nc)
	}
	e.nc, e.r, e.ncFD = nc, nc.Reader(), dup
	e.bigNodes = false // a new connection's nodes start at a page
	// OnDisconnect runs as soon as netpoll's poller saw the hang-up (after
	// it read all input), so a paused connection learns of it at once. It
	// is an exported method of netpoll's connection, though not of the
	// Connection interface. (With no OnRequest, netpoll leaves the rest of
	// the close, and the buffer, to our Close.)
	if d, ok := nc.(interface {
		SetOnDisconnect(netpoll.OnDisconnect) error
	}); ok {
		d.SetOnDisconnect(func(context.Context, netpoll.Connection) {
			b.hungUp(e)
		})
	}
	if !nc.IsActive() {
		// The poller saw the hang-up before the callback was set (a
		// connection registers as it is made). Later, it sees ours.
		b.hungUp(e)
	}
	return nil
}

// hungUp posts that netpoll saw e's stream end, and asks the socket how
// it ended right then: our reply to a peer that closed provokes a reset,
// which would later make an orderly end look like one that was cut off.
//
// It mostly runs on netpoll's goroutine or the reader, without the turn:
// once the fd is removed the core may close it, and its number be another
// socket's, whose pending error the question would take. Remove sets gone
// under endMu, which the question holds, and the core closes the fd only
// after Remove: an fd not gone here stays ours until the answer is in.
func (b *Backend) hungUp(e *entry) {
	e.endMu.Lock()
	if !e.gone.Load() {
		e.snapEndLocked()
	}
	e.endMu.Unlock()
	b.post(post{e: e, what: postHup})
}

// maxIdleReaders bounds the reader goroutines a backend keeps for streams
// to come.
const maxIdleReaders = 64

// readers is a reader goroutine: it serves e (see reader), then waits,
// while fewer than maxIdleReaders others do, for the next stream attach
// hands it. Reusing the goroutine reuses its stack: the core's callbacks
// run on the readers, deeper than a new goroutine's stack, which would
// otherwise grow (a copy) for every connection.
func (b *Backend) readers(e *entry) {
	for {
		b.reader(e)
		if b.idle.Add(1) > maxIdleReaders {
			b.idle.Add(-1)
			return
		}
		idleReaders.Add(1)
		select {
		case e = <-b.handoff:
			b.idle.Add(-1)
			idleReaders.Add(-1)
		case <-b.quit:
			idleReaders.Add(-1)
			return
		}
	}
}

// reader is a stream's goroutine. It waits in netpoll (Peek) until the
// connection's buffer holds input, then reports it (see onInput).
//
// Why a goroutine per stream and not netpoll's OnRequest: OnRequest starts
// a task on netpoll's goroutine pool for every burst of input (a closure,
// a pool task and a new goroutine each time); a parked reader is woken by
// one channel send. netpoll's buffer is not safe for two readers: Peek
// holds e.peek, which Read takes for input the reader is not reporting or
// holding.
func (b *Backend) reader(e *entry) {
	for {
		e.peek.Lock()
		_, err := e.r.Peek(1)
		e.peek.Unlock()
		if err != nil {
			// Closed by Remove, or the peer hung up and all input was read.
			if !e.gone.Load() {
				b.hungUp(e)
			}
			return
		}
		if !b.onInput(e) {
			return
		}
	}
}

// onInput runs on a stream's reader whenever netpoll's buffer holds input.
// It waits for the turn and lets the core read (see Backend). Input the
// reader may not report now is held: the reader parks until the core read
// it all (Read releases it) or the fd was removed. A core more than
// MaxReadAhead behind gets the stream detached (see detach). It reports
// whether the reader goes on.
func (b *Backend) onInput(e *entry) bool {
	b.turn.Lock()
	if b.closed || e.removed {
		b.turn.Unlock()
		return false
	}
	// (Empty if a Read between Peek and the turn took the input.)
	if e.r.Len() > 0 && b.mayReport(e) {
		e.seen = b.gen
		e.fresh = true
		b.reportEntry(e)
		e.fresh = false
		b.afterInline()
		if b.closed || e.removed {
			b.turn.Unlock()
			return false
		}
	}
	n := e.r.Len()
	if n == 0 || b.mayReport(e) && n <= MaxReadAhead {
		// Nothing left, or what the core left is the next Peek's at once.
		b.turn.Unlock()
		return true
	}
	e.readHeld = true
	parks.Add(1)
	if n > MaxReadAhead {
		b.detach(e) // the core is that far behind: let the kernel hold the rest
	}
	if e.interest&evlib.Readable != 0 {
		b.enqueue(e)
		b.kickWaiter()
	}
	b.turn.Unlock()
	return b.park(e)
}

// parked tells whether e's reader waits for ack: it parked with input
// held, and stays parked while its stream is detached.
func (e *entry) parked() bool { return e.readHeld || e.detached }

// mayReport tells whether e's reader may report input now: rx is on and,
// in Poll, the reader did not report e in this call already (the contract
// allows one report of an fd per Poll).
func (b *Backend) mayReport(e *entry) bool {
	return e.interest&evlib.Readable != 0 && (b.passer != nil || e.seen != b.gen)
}

// afterInline follows a report made on a reader. In Loop it runs the
// pass that follows events, and leaves the rest to the service thread:
// whatever the pass could not finish (it wants to be called again at
// once, or a report is pending) wakes it, a timer that falls due sooner
// rearms its timer. Otherwise the service thread's wait goes on after
// this pass, and it is counted again (Waits), as every Looper counts a
// wait after each Pass: a function posted to the core may have run in
// this pass, after the count the service thread made when it began to
// wait. In Poll it counts the report and wakes the wait, whose caller
// runs the pass.
func (b *Backend) afterInline() {
	b.passed()
	if b.passer == nil {
		b.inline++
		b.kickWaiter()
		return
	}
	next, stop := b.passer.Pass()
	if stop || next == 0 || len(b.cand) > 0 {
		b.kickWaiter()
		return
	}
	b.ctr.Waits.Add(1)
	if next > 0 {
		if at := time.Now().Add(next); b.timerAt.IsZero() || at.Before(b.timerAt) {
			b.timerAt = at
			b.timer.Reset(next)
		}
	}
}

// park holds the reader of a connection whose input waits for the core to
// read it. If rx stays paused for DetachDelay meanwhile, it takes the turn
// and the stream out of netpoll (see detach); pausing again while it is
// parked (rearm) restarts the delay. It reports whether the reader goes on
// (false: the fd was removed).
func (b *Backend) park(e *entry) bool {
	t := time.NewTimer(DetachDelay)
	defer t.Stop()
	for {
		select {
		case <-e.ack:
			return true
		case <-e.done:
			return false
		case <-e.rearm:
			t.Reset(DetachDelay)
		case <-t.C:
			b.turn.Lock()
			// Not if the core read it all meanwhile (the ack is on
			// its way) or rx resumed.
			if !b.closed && !e.removed && e.parked() && e.interest&evlib.Readable == 0 {
				b.detach(e)
			}
			b.turn.Unlock()
		}
	}
}

// unpark notes that the input the reader holds was all read, and lets
// the reader go back to netpoll's Peek if the stream is netpoll's.
func (b *Backend) unpark(e *entry) {
	wasParked := e.parked()
	e.readHeld = false
	if wasParked && e.nc != nil {
		select {
		case e.ack <- struct{}{}:
		default: // cannot happen: one park per hold
		}
	}
}

// detach takes a stream out of netpoll's poller, so that from now on the
// kernel keeps its input and TCP pushes back on the peer: when it stayed
// paused for DetachDelay, or netpoll read more than MaxReadAhead ahead of
// the core. It is called with the turn, never while the stream's reader
// is in Peek (netpoll's Detach wakes a Peek with an error): by the reader
// itself, or by Read while the reader is parked with input held.
// netpoll's Detach removes the fd from its epoll and waits for a read its
// poller may be doing on it to finish, and leaves the buffer and the dup
// as they are: nothing is lost.
//
// While the stream is out, the core reads what netpoll's buffer holds
// (held), then the kernel directly, the way a readiness backend's core
// does: Readable is reported whenever rx is on, and a read finds input or
// the kernel empty. Only once it finds the kernel empty with rx on, so the
// core has caught up, does the stream go back to netpoll (a new dup, a new
// connection), whose eager reads would otherwise pile up again what the
// kernel holds. While rx is paused, a helper watches for the peer's
// hang-up, which netpoll no longer sees.
//
// The detached connection is used for nothing but its buffer: Close would
// free its poller's operator a second time (by then another connection's),
// and Release of an emptied buffer touches that operator too.
func (b *Backend) detach(e *entry) {
	if e.nc == nil || e.hup || !e.nc.IsActive() {
		return // out already, or ending: netpoll read all there is
	}
	if err := e.nc.(detacher).Detach(); err != nil {
		b.fail(e, fmt.Errorf("evlib_netpoll: fd %d: netpoll's Detach: %w", e.fd, err))
		return
	}
	if e.r.Len() > 0 {
		e.held, e.heldFD = e.r, e.ncFD
	} else {
		unix.Close(e.ncFD) // (held is never empty: a read of it would say end of stream)
	}
	e.nc, e.r, e.ncFD = nil, nil, -1
	e.readHeld = false // events says Readable for a detached stream
	e.detached = true
	detaches.Add(1)
	if e.interest&evlib.Readable == 0 {
		b.watchHangup(e)
	}
}

// attaches, detaches and reattaches count streams given to netpoll, taken
// out of it and given back, and parks the readers that parked with input
// held, for tests.
var attaches, detaches, reattaches, parks atomic.Int64

// readerStarts counts the reader goroutines started, idleReaders those
// waiting for a stream, in every backend of the process, for tests.
var readerStarts, idleReaders atomic.Int64

// bigNodeStreams counts the streams whose reads went netpoll's way (see
// entry.bigNodes), for tests.
var bigNodeStreams atomic.Int64

// reattach gives a detached stream whose core caught up back to netpoll,
// and its reader to it.
func (b *Backend) reattach(e *entry) {
	dup, err := dupFD(e.fd, true)
	if err == nil {
		err = b.connect(e, dup)
	}
	if err != nil {
		b.fail(e, fmt.Errorf("evlib_netpoll: fd %d: back to netpoll: %w", e.fd, err))
		return
	}
	e.watchHup.Store(false)
	reattaches.Add(1)
	b.unpark(e) // while still detached: the reader is parked
	e.detached = false
	e.releaseFile() // and ends the hang-up helper, or once the other helpers ended
}

// fail ends a stream the backend cannot serve any more: it is reported
// with Error and Read returns err.
func (b *Backend) fail(e *entry, err error) {
	if e.fail == nil {
		e.fail = err
	}
	b.enqueue(e)
}

// watchHangup starts the helper that tells a detached stream's hang-up.
// Without the runtime poller's dup (fd exhaustion) the hang-up is learnt
// when rx resumes.
func (b *Backend) watchHangup(e *entry) {
	e.watchHup.Store(true)
	if e.waitH || e.ensureFile() != nil {
		return
	}
	e.waitH = true
	go b.hangupHelper(e, e.rc, e.hupGen)
}

// hangupHelper waits in the runtime poller until a detached stream's
// peer hung up (or the stream went back to netpoll) and posts what it
// found. poll(2) asked only for POLLRDHUP reports no input, of which a
// detached stream has plenty; each new segment wakes the wait once, and
// once the socket is full nothing does until the FIN or reset. A helper
// let go (see releaseFile) ends with its file closed; its post, of an
// older gen, is dropped.
func (b *Backend) hangupHelper(e *entry, rc syscall.RawConn, gen uint32) {
	hup := false
	err := rc.Read(func(fd uintptr) bool {
		if !e.watchHup.Load() {
			return true
		}
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		n, err := unix.Poll(p, 0)
		hup = err == nil && n > 0
		return hup
	})
	if e.gone.Load() {
		return
	}
	var ev evlib.Events
	if hup || err != nil {
		ev = evlib.Hangup
	}
	b.post(post{e: e, what: postWatchEnd, ev: ev, gen: gen})
}

// openFile makes the dup the helpers wait on, in the Go runtime's poller.
func (e *entry) openFile(dup int) error {
	f := os.NewFile(uintptr(dup), "")
	if f == nil {
		unix.Close(dup)
		return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, e.fd)
	}
	// A descriptor the runtime cannot poll (a regular file) has no
	// deadlines: it is always ready, which no poller can report.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return fmt.Errorf("%w: fd %d cannot be polled (regular file?): %v", evlib.ErrBadFD, e.fd, err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return fmt.Errorf("fd %d: %w", e.fd, err)
	}
	e.file, e.rc = f, rc
	return nil
}

// releaseFile closes a stream's helper dup once no helper waits on it and
// the stream is netpoll's again, so a stream holds one dup but while a
// write is blocked or it is out of netpoll.
//
// A hang-up helper still out then is let go: the close ends its wait. It
// would not end on its own before the stream's end, the runtime's poller
// waking it for new input no more: netpoll's poller, level-triggered,
// drains the socket before the runtime's epoll_wait collects the edge,
// and epoll reports an edge by what the socket holds when it collects it.
func (e *entry) releaseFile() {
	if e.file == nil || e.nc == nil || e.waitR || e.waitW {
		return
	}
	if e.waitH {
		e.waitH = false
		e.hupGen++
	}
	e.file.Close()
	e.file, e.rc = nil, nil
}

// ensureFile makes the dup the helpers wait on unless it exists.
func (e *entry) ensureFile() error {
	if e.file != nil {
		return nil
	}
	dup, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	return e.openFile(dup)
}

// arm starts the helpers the entry's state calls for.
func (b *Backend) arm(e *entry) {
	if e.removed {
		return
	}
	in := e.interest&evlib.Readable != 0
	if e.kind == evlib.KindFile {
		if was := e.watchIn.Swap(in); in && e.waitR && (!was || e.inMissed) {
			// Its helper watched for the end only, and input that came
			// meanwhile woke it for nothing: it wakes for new input, not
			// for that. Look now that it counts, and after every report
			// until the core emptied the fd (level-triggered).
			e.inMissed = sys.ReadableNow(e.fd)
			if e.inMissed {
				e.rawReady |= evlib.Readable
			}
		}
	}
	if e.nc == nil && !e.detached && !e.waitR && (in || e.kind == evlib.KindFile && !e.endSeen) {
		e.waitR = true
		b.helping(e)
		go b.helper(e, e.rc, false)
	}
	if e.kind == evlib.KindStream && e.hup && e.hupShown && e.interest == 0 && !e.waitR && !e.endSeen && e.ensureFile() == nil {
		// netpoll says nothing of a stream after its end, and the end
		// was reported: a helper watches for what may follow, the reset
		// or error of a half-open connection (POLLHUP or POLLERR alone;
		// the peer's FIN with our write side open raises neither), so
		// that it is reported with interest 0
		// (evlib.CapHangupWithoutInterest). It starts once per stream,
		// after its end, never per message.
		e.watchIn.Store(false)
		e.waitR = true
		go b.helper(e, e.rc, false)
	}
	if e.interest&evlib.Writable != 0 && e.blocked && !e.waitW {
		if err := e.ensureFile(); err != nil {
			// Cannot wait (no descriptor free): reporting Writable anyway
			// would have the core meet EAGAIN again and again.
			b.fail(e, fmt.Errorf("evlib_netpoll: fd %d: waiting for writability: %w", e.fd, err))
			return
		}
		e.waitW = true
		b.helping(e)
		go b.helper(e, e.rc, true)
	}
}

// lookEvery is how many passes may go by before the turn's holder asks
// poll(2) about the fds whose helpers wait in the runtime poller (see
// lookAhead): at full load, 64 round trips take about 0.2 ms.
const lookEvery = 64

// helping notes that a helper of e waits in the runtime poller.
func (b *Backend) helping(e *entry) {
	if e.inHelped {
		return
	}
	e.inHelped = true
	b.helped = append(b.helped, e)
	if len(b.helped) > 2*b.helpedLive+64 {
		b.pruneHelped() // few passes, many helpers: keep the list short
	}
}

// pruneHelped drops the entries no helper of which waits any more.
func (b *Backend) pruneHelped() {
	live := b.helped[:0]
	for _, e := range b.helped {
		if e.removed || !e.waitR && !e.waitW {
			e.inHelped = false
			continue
		}
		live = append(live, e)
	}
	clear(b.helped[len(live):])
	b.helped = live
	b.helpedLive = len(live)
}

// passed counts a pass: it keeps the tick going (see tick_linux.go), and
// every lookEvery passes looks ahead.
func (b *Backend) passed() {
	b.tick.passed()
	if b.passes++; b.passes >= lookEvery && len(b.helped) > 0 {
		b.lookAhead()
	}
}

// tickLook looks ahead at a tick's expiry, if no pass holds the turn, and
// wakes the service thread's wait when it found something.
func (b *Backend) tickLook() {
	if !b.turn.TryLock() {
		return
	}
	if !b.closed && len(b.helped) > 0 {
		b.lookAhead()
		if len(b.cand) > 0 {
			b.kickWaiter()
		}
	}
	b.turn.Unlock()
}

// lookAhead asks poll(2) about the fds whose helpers wait in the runtime
// poller (listeners, datagram sockets, connecting streams, blocked writes)
// and takes what it finds as their helpers would: with one busy P the
// runtime polls them only every 10 ms (see "One P" in the package
// documentation).
//
// The helpers stay out: whatever the runtime tells them later, they check
// again with poll(2), and go back to waiting if it is gone (a listener's
// queue the core emptied); at worst they add a report the core finds
// nothing for. File helpers are left to themselves: a pipe's helper also
// watches for the end while rx is paused (see entry.watchIn).
func (b *Backend) lookAhead() {
	b.passes = 0
	b.pruneHelped()
	pfds, asked := b.pfds[:0], false
	for _, e := range b.helped {
		pfd := unix.PollFd{Fd: -1} // poll(2) skips a negative fd
		if e.waitR && e.kind != evlib.KindFile {
			pfd.Fd = int32(e.fd)
			if e.watchIn.Load() {
				pfd.Events |= unix.POLLIN
			} // else only the end: POLLHUP, POLLERR, which poll(2) always reports
		}
		if e.waitW {
			pfd.Fd = int32(e.fd)
			pfd.Events |= unix.POLLOUT
		}
		pfds = append(pfds, pfd)
		asked = asked || pfd.Fd >= 0
	}
	b.pfds = pfds
	if !asked {
		return
	}
	b.ctr.Waits.Add(1)
	if n, err := unix.Poll(pfds, 0); n <= 0 || err != nil {
		return
	}
	for i, e := range b.helped {
		got := pfds[i].Revents
		if got == 0 || pfds[i].Fd < 0 {
			continue
		}
		// As the helpers' posts (see drain), waitW and waitR aside.
		if e.waitW && got&(unix.POLLOUT|unix.POLLERR|unix.POLLHUP) != 0 {
			b.tookWrite(e, evmask.FromPoll(got&^unix.POLLIN))
		}
		if e.waitR && e.kind != evlib.KindFile {
			if rd := got &^ unix.POLLOUT; rd != 0 {
				e.tookRead(readEvents(rd))
			}
		}
		b.enqueue(e)
	}
}

// helper waits in the runtime poller until the fd is readable (or
// writable), posts what poll(2) says and exits. Closing the entry's file
// (Remove) ends the wait.
//
// Why not a blocking poll(2) on a helper goroutine: it holds an OS thread
// per waiting fd and needs a private pipe to be stopped. The runtime
// poller parks only a goroutine and is stopped by closing the dup. Its
// readiness is edge-ish and reset when the wait starts, so the condition
// is always tested with a zero-timeout poll(2) inside the callback.
func (b *Backend) helper(e *entry, rc syscall.RawConn, write bool) {
	var got int16
	check := func(fd uintptr) bool {
		want := int16(unix.POLLIN)
		switch {
		case write:
			want = unix.POLLOUT
		case !e.watchIn.Load():
			want = 0 // only the end: POLLHUP, POLLERR
		}
		p := []unix.PollFd{{Fd: int32(fd), Events: want}}
		n, err := unix.Poll(p, 0)
		if err != nil || n == 0 {
			return false
		}
		got = p[0].Revents
		return true
	}
	var err error
	if write {
		err = rc.Write(check)
	} else {
		err = rc.Read(check)
	}
	if e.gone.Load() {
		return
	}
	if err != nil {
		got = unix.POLLERR
	}
	if write {
		b.post(post{e: e, what: postRawWrite, ev: evmask.FromPoll(got)})
	} else {
		b.post(post{e: e, what: postRawRead, ev: readEvents(got)})
	}
}

// readEvents is what a read helper's poll(2) found, as the core is told.
func readEvents(got int16) evlib.Events {
	ev := evmask.FromPoll(got)
	if ev&evlib.Hangup != 0 {
		ev |= evlib.Readable // end of file is to be read
	}
	return ev
}

// tookRead takes in what a read helper found (drain, or lookAhead in its
// stead).
func (e *entry) tookRead(ev evlib.Events) {
	e.rawReady |= ev
	e.endSeen = e.endSeen || (e.kind == evlib.KindFile || e.hup) && ev&(evlib.Hangup|evlib.Error) != 0
}

// tookWrite takes in what a write helper found (drain, or lookAhead in its
// stead): the fd is writable again, or failed.
func (b *Backend) tookWrite(e *entry, ev evlib.Events) {
	e.blocked = false
	e.rawReady |= ev &^ evlib.Writable
	b.connected(e)
}

// Modify implements evlib.Backend.
func (b *Backend) Modify(fd int, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	e := b.lookup(fd)
	if e == nil {
		return fmt.Errorf("%w: fd %d", evlib.ErrNotWatched, fd)
	}
	ev &= evlib.Readable | evlib.Writable
	if ev == e.interest {
		return nil
	}
	b.ctr.InterestChanges.Add(1)
	added, dropped := ev&^e.interest, e.interest&^ev
	e.interest = ev
	if dropped&evlib.Readable != 0 && e.parked() && e.nc != nil {
		select {
		case e.rearm <- struct{}{}:
		default:
		}
	}
	if e.detached && !e.hup {
		if dropped&evlib.Readable != 0 {
			b.watchHangup(e)
		} else if added&evlib.Readable != 0 {
			e.watchHup.Store(false) // the core's reads will tell
		}
	}
	if added&evlib.Writable != 0 && !e.blocked && !sys.WritableNow(fd) {
		e.blocked = true
	}
	if e.connecting && dropped&evlib.Writable != 0 {
		// The core is done with the connect: a connect that finished
		// before writability was asked for got no write helper to say so.
		b.connected(e)
	}
	b.arm(e)
	b.enqueue(e)
	return nil
}

// Remove implements evlib.Backend.
func (b *Backend) Remove(fd int) error {
	e := b.lookup(fd)
	if b.closed || e == nil {
		return nil
	}
	b.ctr.InterestChanges.Add(1)
	b.fds[fd] = nil
	b.drop(e)
	return nil
}

func (b *Backend) drop(e *entry) {
	e.removed = true
	e.endMu.Lock() // not while hungUp asks the fd: the core closes it next
	e.gone.Store(true)
	e.endMu.Unlock()
	e.watchHup.Store(false)
	close(e.done)
	if e.nc != nil {
		e.nc.Close()
	}
	if e.held != nil {
		unix.Close(e.heldFD)
		e.held, e.heldFD = nil, -1
	}
	if e.file != nil {
		e.file.Close()
	}
}

// Poll implements evlib.Backend. While it waits, readers report on their
// own goroutines (see Backend); it returns once one did, or a helper
// posted, a wakeup came or timeout passed.
func (b *Backend) Poll(timeout time.Duration) (int, error) {
	if b.closed {
		return 0, evlib.ErrClosed
	}
	b.gen++
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	// Readers waiting for the turn get it first: without this, a Poll
	// that always finds something (a writable fd) would starve them.
	woken := b.wait(0)
	for {
		b.drain()
		b.passed()
		n := b.inline + b.report()
		b.inline = 0
		if n > 0 || woken || timeout == 0 {
			return n, nil
		}
		d := timeout
		if timeout > 0 {
			if d = time.Until(deadline); d <= 0 {
				return 0, nil
			}
		}
		woken = b.wait(d)
	}
}

// Loop implements evlib.Looper. It is Poll's loop with one difference: a
// reader that reported input also runs the pass that follows, on its own
// goroutine, so a round trip costs no hand-off to the service goroutine.
func (b *Backend) Loop(p evlib.Passer) error {
	if b.closed {
		return evlib.ErrClosed
	}
	b.passer = p
	defer func() { b.passer = nil }()
	next, stop := p.Pass()
	for !stop {
		b.drain()
		b.passed()
		if b.report() > 0 {
			next = 0 // pass now, but let waiting readers in first
		}
		b.wait(next)
		next, stop = p.Pass()
	}
	return nil
}

// wait gives up the turn until a post or an inline report (kick), a
// wakeup or d (d < 0: no limit; d == 0: only long enough for readers
// waiting for the turn to take it), then takes it back. It reports
// whether a wakeup came.
func (b *Backend) wait(d time.Duration) (woken bool) {
	if d == 0 {
		b.turn.Unlock()
		runtime.Gosched()
		b.turn.Lock()
		select {
		case <-b.wake:
			return true
		default:
			return false
		}
	}
	b.ctr.Waits.Add(1)
	if d > 0 {
		b.timerAt = time.Now().Add(d)
		b.timer.Reset(d)
	} else if !b.timerAt.IsZero() {
		b.timer.Stop()
		b.timerAt = time.Time{}
	}
	fired := false
	b.turn.Unlock()
	select {
	case <-b.kick:
	case <-b.wake:
		woken = true
	case <-b.timer.C:
		fired = true
	}
	b.turn.Lock()
	if fired {
		b.timerAt = time.Time{}
	}
	return woken
}

// drain applies the queued posts.
func (b *Backend) drain() {
	b.mu.Lock()
	ps := b.posts
	b.posts = b.pspare[:0]
	b.mu.Unlock()
	for i, p := range ps {
		ps[i] = post{}
		e := p.e
		if e.removed {
			continue
		}
		switch p.what {
		case postHup:
			e.hup = true
		case postWatchEnd:
			if p.gen != e.hupGen {
				continue // a helper releaseFile let go
			}
			e.waitH = false
			switch {
			case p.ev&evlib.Hangup != 0 && e.detached:
				e.hup = true
			case e.detached && !e.hup && e.interest&evlib.Readable == 0:
				b.watchHangup(e) // paused again before this helper ended
			}
			e.releaseFile()
		case postRawRead:
			e.waitR = false
			e.inMissed = false // the next helper looks before it waits
			e.tookRead(p.ev)
			e.releaseFile() // a stream's read helper from before netpoll took it
			if e.kind == evlib.KindFile && e.interest&evlib.Readable == 0 {
				// rx was paused after the helper looked: no report
				// follows to start the one that watches for the end.
				b.arm(e)
			}
		case postRawWrite:
			e.waitW = false
			b.tookWrite(e, p.ev)
			e.releaseFile()
		}
		b.enqueue(e)
	}
	b.pspare = ps[:0]
}

// events is what e has to report now.
func (e *entry) events() evlib.Events {
	var ev evlib.Events
	in := e.interest
	if (e.readHeld || e.fresh || e.detached) && in&evlib.Readable != 0 {
		ev |= evlib.Readable
	}
	if e.hup {
		if in&evlib.Readable != 0 {
			ev |= evlib.Readable | evlib.Hangup
		} else if !e.hupShown {
			ev |= evlib.Hangup
		}
	}
	if e.fail != nil && !e.failShown {
		ev |= evlib.Error
	}
	ev |= e.rawReady & (in | evlib.Hangup | evlib.Error)
	if in&evlib.Writable != 0 && !e.blocked {
		ev |= evlib.Writable
	}
	return ev
}

// report hands every entry with something to report to the sink, once.
func (b *Backend) report() int {
	cur := b.cand
	b.cand = b.spare[:0]
	n := 0
	for i, e := range cur {
		cur[i] = nil
		e.queued = false
		if e.removed || b.closed {
			continue
		}
		if b.passer == nil && e.seen == b.gen {
			b.enqueue(e) // a reader reported it in this Poll: the next one
			continue
		}
		if b.reportEntry(e) {
			n++
		}
	}
	b.spare = cur[:0]
	return n
}

// reportEntry hands what e has to report, if anything, to the sink.
func (b *Backend) reportEntry(e *entry) bool {
	ev := e.events()
	if ev == 0 {
		return false
	}
	b.sink.Ready(e.fd, ev)
	if e.removed {
		return true
	}
	if ev&evlib.Hangup != 0 && e.interest&evlib.Readable == 0 {
		e.hupShown = true
	}
	if ev&evlib.Error != 0 && e.fail != nil {
		e.failShown = true
	}
	e.rawReady &^= ev
	b.arm(e)
	if e.events() != 0 && (e.interest&evlib.Writable != 0 || e.hup || e.readHeld || e.detached || e.inMissed) {
		b.enqueue(e) // level-triggered: still ready next time
	}
	return true
}

// netpollPage is netpoll's page, the size of a connection's nodes until
// netpoll held more than that for it (see entry.bigNodes).
const netpollPage = 8 << 10

// Read implements evlib.IO.
func (b *Backend) Read(fd int, p []byte) (int, error) {
	e := b.lookup(fd)
	if e == nil {
		return rawRead(fd, p)
	}
	n, err := b.read(e, p)
	e.rxRead += uint64(n)
	return n, err
}

func (b *Backend) read(e *entry, p []byte) (int, error) {
	fd := e.fd
	switch {
	case e.fail != nil:
		return 0, e.fail
	case e.detached:
		return b.readDetached(e, p)
	case e.nc == nil:
		return rawRead(fd, p) // watched by helpers
	}
	r := e.r
	buffered := r.Len()
	n := min(buffered, len(p))
	if n > 0 && !e.fresh && !e.readHeld {
		// Not the input the reader reports or holds: it came while the
		// reader waited, and the reader may be looking at the buffer
		// (Peek) right now. It is done soon: its wait is over.
		e.peek.Lock()
		defer e.peek.Unlock()
	}
	if n == 0 {
		if len(p) == 0 {
			return 0, nil
		}
		if e.hup || !e.nc.IsActive() {
			return 0, e.ended()
		}
		return 0, fmt.Errorf("fd %d: %w", fd, evlib.ErrWouldBlock)
	}
	if !e.bigNodes && buffered > netpollPage {
		e.bigNodes = true
		bigNodeStreams.Add(1)
	}
	if !e.bigNodes {
		r.Release() // what earlier reads took (see entry.bigNodes)
	}
	buf, err := r.Next(n)
	if err != nil {
		return 0, fmt.Errorf("fd %d: netpoll: %w", fd, err)
	}
	copy(p, buf)
	if e.bigNodes {
		r.Release()
	}
	if e.readHeld {
		// The reader is parked (not in Peek) until this input is all
		// read, and netpoll goes on reading meanwhile: a core that
		// reads steadily but slower than netpoll never empties the
		// buffer, and its rx may pause and resume faster than
		// DetachDelay, so the reader's own checks never come. Look here.
		switch l := r.Len(); {
		case l == 0:
			b.unpark(e) // held input all read: the reader goes back to waiting
		case l > MaxReadAhead:
			b.detach(e) // the core is that far behind: let the kernel hold the rest
		}
	}
	return n, nil
}

// readDetached reads for a detached stream (see detach): what netpoll's
// buffer held, then the kernel. Finding the kernel empty with rx on, it
// gives the stream back to netpoll.
func (b *Backend) readDetached(e *entry, p []byte) (int, error) {
	if r := e.held; r != nil {
		n := min(r.Len(), len(p))
		if n > 0 {
			buf, err := r.Next(n)
			if err != nil {
				return 0, fmt.Errorf("fd %d: netpoll: %w", e.fd, err)
			}
			copy(p, buf)
		}
		if r.Len() > 0 {
			r.Release()
		} else {
			// All read. Not Release: see detach.
			unix.Close(e.heldFD)
			e.held, e.heldFD = nil, -1
		}
		return n, nil
	}
	n, err := rawRead(e.fd, p)
	switch {
	case n == 0 && err == nil && len(p) > 0:
		// netpoll may have read the reset just before the detach and
		// kept it; the kernel then says end of stream.
		return 0, e.ended()
	case errors.Is(err, evlib.ErrWouldBlock) && e.interest&evlib.Readable != 0 && !e.hup && e.fail == nil:
		b.reattach(e)
	}
	return n, err
}

// sockEnd is what a socket says of how its stream ended.
type sockEnd struct {
	err    unix.Errno // pending error (SO_ERROR)
	closed bool       // TCP state CLOSE
	rcvd   uint64     // sequence space received (tcpi_bytes_received): data, and 1 for a FIN
}

// sockEndOf asks the socket how its stream ended. A TCP stream that got
// the peer's FIN and no reset (CLOSE_WAIT, or LAST_ACK once our own FIN
// went out too) has no error to take (a reset or a timeout moves it to
// CLOSE), so the common orderly end costs one question, not two.
func sockEndOf(fd int) sockEnd {
	var s sockEnd
	if ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
		if ti.State == sys.TCPCloseWait || ti.State == sys.TCPLastAck {
			return s
		}
		s.closed = ti.State == sys.TCPClose
		s.rcvd = ti.Bytes_received
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil {
		s.err = unix.Errno(v)
	}
	return s
}

// verdict tells how a stream netpoll has read from ended: netpoll's read
// takes a reset's error (ECONNRESET) and keeps it to itself, attached or
// just before a detach, so the kernel alone says end of stream. The socket
// still knows (s): a pending error, or a TCP connection in state CLOSE.
// With our own write side open, only a reset or a timeout leaves an open
// socket in CLOSE (the peer's FIN leads to CLOSE_WAIT); after our
// Shutdown, the peer's FIN leads to CLOSE as well (through TIME_WAIT),
// and the reset is told by the sequence space received: the kernel counts
// a FIN in it (tcpi_bytes_received), so a stream that ended with the
// peer's FIN received one more than the data read, and a reset none (see
// finSeen).
//
// A pending EPIPE is the one exception: the kernel leaves it for a reset
// that came after the peer's FIN (in CLOSE_WAIT), and its own read then
// says end of stream, as a read here does.
func (e *entry) verdict(s sockEnd) error {
	switch {
	case s.err == unix.EPIPE:
		return nil
	case s.err != 0:
		return s.err
	case !s.closed:
		return nil
	}
	if fin, known := e.finSeen(s); known {
		if fin {
			return nil
		}
		return unix.ECONNRESET
	}
	if !e.shutWR {
		return unix.ECONNRESET
	}
	return nil // cannot tell: read as the orderly end it most likely is
}

// finSeen tells, for a stream that ended in TCP state CLOSE and whose
// input was all read, whether the peer's FIN was received, if the counts
// allow: what the kernel received is what was read before Add, what Read
// returned since, and 1 for a FIN. A kernel without tcpi_bytes_received
// (before 4.1) says 0 and cannot tell; neither can a stream whose base
// was unknown at Add, nor one with urgent data, which is received but
// never read.
func (e *entry) finSeen(s sockEnd) (fin, known bool) {
	switch {
	case !e.rx0.known:
		return false, false
	case e.rx0.fin:
		return true, true
	}
	got := e.rx0.read + e.rxRead
	switch s.rcvd {
	case got:
		return false, true
	case got + 1:
		return true, true
	}
	return false, false
}

// rxBase is what a TCP stream had received when it was added: the data
// read before, and whether the peer's FIN had come.
type rxBase struct {
	read  uint64
	fin   bool
	known bool
}

// rxBaseOf reads the base of a stream being added (see finSeen): what the
// kernel received (tcpi_bytes_received) less what it still holds
// (SIOCINQ) was read by someone before. Nothing reads the socket while
// it is added, but input may arrive between the two questions: the
// answer counts only if the count received did not change around the
// second. ti is the stream's TCP_INFO, asked already: nothing more is
// asked of a stream that received nothing yet, two more questions
// otherwise.
func rxBaseOf(fd int, ti *unix.TCPInfo) rxBase {
	for range 3 {
		switch ti.State {
		case sys.TCPClose:
			return rxBase{} // ended already: how is not ours to tell
		case sys.TCPCloseWait, sys.TCPLastAck, sys.TCPClosing:
			return rxBase{fin: true, known: true}
		}
		if ti.Bytes_received == 0 {
			return rxBase{known: true}
		}
		inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
		if err != nil {
			return rxBase{}
		}
		again, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return rxBase{}
		}
		if again.Bytes_received == ti.Bytes_received && again.State == ti.State && uint64(inq) <= ti.Bytes_received {
			return rxBase{read: ti.Bytes_received - uint64(inq), known: true}
		}
		ti = again
	}
	return rxBase{}
}

// ended is how e's stream ended: what the socket said when netpoll saw the
// end (hungUp), or, if it has not yet, what it says now.
func (e *entry) ended() error { return e.verdict(*e.snapEnd()) }

// snapEnd asks the socket how its stream ended, once: reading SO_ERROR
// clears it, so a second reader (netpoll's OnDisconnect and the reader
// both report the end) would take a reset after the peer's FIN for one
// without (see verdict).
func (e *entry) snapEnd() *sockEnd {
	e.endMu.Lock()
	defer e.endMu.Unlock()
	return e.snapEndLocked()
}

// snapEndLocked is snapEnd with endMu held.
func (e *entry) snapEndLocked() *sockEnd {
	if e.endSay == nil {
		s := sockEndOf(e.fd)
		e.endSay = &s
	}
	return e.endSay
}

func rawRead(fd int, p []byte) (int, error) {
	for {
		n, err := sys.Read(fd, p)
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, fmt.Errorf("fd %d: %w: %w", fd, evlib.ErrWouldBlock, err)
		default:
			return 0, err
		}
	}
}

// Write implements evlib.IO: a raw write(2) on the core's fd.
func (b *Backend) Write(fd int, p []byte) (int, error) {
	for {
		n, err := sys.Write(fd, p)
		switch {
		case err == nil:
			if n < len(p) {
				b.writeBlocked(fd)
			}
			return n, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			b.writeBlocked(fd)
			return 0, fmt.Errorf("fd %d: %w: %w", fd, evlib.ErrWouldBlock, err)
		default:
			return 0, err
		}
	}
}

// writeBlocked notes that a write to fd could not finish: writable is
// reported again only once a helper saw the fd writable.
func (b *Backend) writeBlocked(fd int) {
	if e := b.lookup(fd); e != nil {
		e.blocked = true
		b.arm(e)
	}
}

// Shutdown implements evlib.IO: shutdown(2) of the write side, noted so
// that the end of the stream is told right (see verdict).
func (b *Backend) Shutdown(fd int) error {
	if e := b.lookup(fd); e != nil {
		e.shutWR = true
	}
	return unix.Shutdown(fd, unix.SHUT_WR)
}

// Close implements evlib.Backend: it lets go of every fd's netpoll
// connection and helper, never of netpoll itself.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	for fd, e := range b.fds {
		if e != nil {
			b.fds[fd] = nil
			b.drop(e)
		}
	}
	b.timer.Stop()
	b.tick.close()
	close(b.quit)
	b.mu.Lock()
	b.posts = nil
	b.mu.Unlock()
	b.turn.Unlock() // readers still waiting for it find the backend closed
	return nil
}
