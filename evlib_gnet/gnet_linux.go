//go:build linux && !poll_opt

package evlib_gnet

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/evmask"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{
		Caps: evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapFiles |
			evlib.CapOwnWaker | evlib.CapForeignLoop | evlib.CapUnixReset,
		New: New,
	}
}

// Design notes.
//
// Interest. gnet's Poller has AddRead/AddWrite/AddReadWrite, ModRead,
// ModReadWrite and Delete: no ModWrite and no "registered with an empty
// mask". The backend keeps each fd's interest and whether it is in the
// epoll set, and picks the calls: write-only from a registered fd is
// Delete+AddWrite (two epoll_ctl, both counted in InterestChanges), and
// interest 0 is Delete. So an fd with interest 0 is not in the epoll set
// and its Hangup/Error are not reported until it gets an interest again
// (the contract allows it; the conformance suite skips that check).
//
// Signals. gnet's Trigger cannot be used while we own the poller: Polling
// returns on ErrEngineShutdown from a task (or from an fd callback in a
// batch that also held gnet's wake eventfd) before it resets its private
// wakeupCall flag, and its wake eventfd is edge-triggered and never read.
// After such a return every later Trigger only queues its task and never
// wakes epoll_wait again: the second Poll(0) of a Thread.Service loop, or a
// Run after Run returned on its context, would hang. Single passes must
// leave Polling many times, so when the backend owns the poller it uses
// eventfds of its own, registered in the poller and never seen by gnet's
// task queue:
//
//   - sig: written (once, coalesced by an atomic flag) by Wake, by the
//     timer for Pass's next, and by Poll to end its pass. Any goroutine may
//     write it; a RWMutex and a closed flag fence it against Close, so a
//     late timer or Wake never writes into a reused fd number.
//   - idle: written by the loop goroutine when Pass returns 0 (work is
//     pending) and left readable, so epoll_wait keeps returning at once and
//     fd events interleave with the pending work; read (disarmed) once Pass
//     returns something else. Re-Triggering a task instead would starve
//     epoll_wait (gnet drains its urgent queue until it is empty).
//   - due: the end of a batch; see Batches.
//
// Stopping: the fd callback returns gnet's ErrEngineShutdown, which is the
// only way out of Polling; no gnet task is ever queued, so nothing is left
// stranded in gnet's queue.
//
// On a foreign Poller (see Dispatcher) sig and idle are registered in the
// application's poller, which forwards them to Dispatch with our other
// fds. There sig and due are level-triggered, and read when dispatched:
// the application may leave its Polling in the middle of a batch (one of
// its own fd callbacks returning an error) and poll again later. An
// edge-triggered event would have gone with that batch while sigReq or
// dueOn stayed set, so that nothing wrote them again, and wakeups and held
// events would be lost for good (gnet's own wake eventfd has that flaw; a
// wakeup there costs a read(2) more). Wakeups do not use Trigger there
// either:
// gnet drains its urgent queue until it is empty before it polls again,
// so threads attached to one poller that post to each other (each pass
// Triggering the other's task) would keep it in that drain and away from
// its fds for as long as they kept at it. Through sig every wakeup waits
// for the poller's next epoll_wait, in a batch with the fds ready by then.
//
// Batches. gnet's Polling hands over a batch one fd at a time and shows no
// end, but after a batch it polls again without blocking. The backend
// holds the events of a batch, and its first one writes due, an
// edge-triggered eventfd that is never read on its own poller (each write
// is one event of the next epoll_wait; the counter, which could hold
// 2^64-2 writes, never fills; on a foreign poller see above). When due's
// event comes, the core gets the held events in fd
// order, then the pass that follows events runs: once per batch, as on
// the epoll backend, instead of once per fd, for one write(2) a batch.
// The order is the epoll backend's too: at 1,000 connections, serving a
// batch in the order epoll_wait returned it costs about 10% more CPU per
// round trip. Held fds are level-triggered and unread, so the epoll_wait
// that brings due reports them again; their events merge. Holding a batch
// of one buys nothing and costs the write and an epoll_wait (5% more CPU
// per connection in the churn benchmark, whose batches are mostly one fd),
// so after one the next directRun fd events go to the core at once, each
// followed by a pass, and then a batch is held again. due's event is
// lost only when Polling stops in the middle of a batch; when Polling
// returns the backend forgets the write, and a stale event makes one pass
// too many.
//
// Closes. The pass runs while a batch is being delivered (due's event
// comes with other fds), so an fd the core closed in it may still have
// events further in that batch. The backend closes it itself
// (evlib.FDCloser): after a third eventfd, reap, written once the fd was
// removed, is delivered in a later batch. A batch with closes costs a
// write and a read more, and every fd stays open until the batch after
// the one it was closed in.

const (
	regBit  = 1 << 7 // in fdState.st: the fd is in the epoll set
	watched = 1 << 6 // in fdState.st: the core added the fd
	special = 1 << 5 // in fdState.st: one of our own eventfds
	held    = 1 << 4 // in fdState.st: an event of the fd waits in batch (at)
	ioMask  = uint8(evlib.Readable | evlib.Writable)
)

type fdState struct {
	st   uint8  // watched | regBit | held | interest, or special | regBit
	seen uint32 // batch stamp, see Backend.gen
	at   int32  // the fd's event in Backend.batch, if held
}

type mode uint8

const (
	modeIdle mode = iota
	modeLoop
	modePoll
)

// errStop makes Polling return.
var errStop = gerrors.ErrEngineShutdown

// Backend is gnet's Poller serving one service thread.
type Backend struct {
	poller  *netpoll.Poller
	foreign *Host // non-nil: the poller belongs to the application
	drv     driver
	sink    evlib.Sink
	ctr     *evlib.Counters

	// Loop-goroutine state: only the service thread touches it. On a
	// foreign poller Add/Modify/Remove may run on a goroutine other than
	// the application's Polling one (core.New, Listen before the loop
	// runs), so there fdMu guards fds.
	fds     []fdState
	fdMu    sync.Mutex
	mode    mode
	passer  evlib.Passer
	gen     uint32  // Poll's current batch stamp
	reports int     // fds reported by the current Poll
	idleOn  bool    // idle is readable
	dueOn   bool    // due was written and its event has not come
	batch   []event // fd events held for the pass (see Batches)
	direct  int     // fd events still to hand over at once (see Batches)
	timerAt time.Time
	timer   *time.Timer
	// Poll's timeout: made at the first Poll with one and reset at each
	// after; pollKicked hears each expiry's kick once it was written.
	pollTimer  *time.Timer
	pollKicked chan struct{}

	sig, idle, due sys.Waker

	// Closes (see CloseFD): reap is level-triggered and drained when its
	// event is delivered, so an event of it is of a write not yet drained.
	// reap is written exactly while covered holds fds.
	reap    sys.Waker
	reapMu  sync.Mutex
	covered []int // closed before reap was written: closed at its event
	waiting []int // closed since: for the next write

	// Cross-goroutine state.
	sigReq atomic.Bool // sig written, not yet consumed
	mu     sync.RWMutex
	closed bool
	isDown atomic.Bool // closed, readable without mu
}

// driver is what a foreign poller's Dispatch needs from the core: its
// foreign-mode entry points, which the core's Sink forwards to its thread.
type driver interface {
	ServiceFD(*unix.PollFd) error
	Service(time.Duration) error
	ServiceAdjustTimeout(time.Duration) time.Duration
}

// New creates the backend. With cfg.Foreign set to a *netpoll.Poller the
// application owns, it registers its fds there instead of in a poller of
// its own; the application's Polling callback forwards the fds it does not
// know to Dispatcher(poller).Dispatch.
func New(cfg evlib.Config) (evlib.Backend, error) {
	quietGnet()
	b := &Backend{sink: cfg.Sink, ctr: cfg.Counters}
	switch f := cfg.Foreign.(type) {
	case nil:
		p, err := netpoll.OpenPoller()
		if err != nil {
			return nil, fmt.Errorf("gnet OpenPoller: %w", err)
		}
		b.poller = p
	case *netpoll.Poller:
		if f == nil {
			return nil, fmt.Errorf("%w: nil *netpoll.Poller", evlib.ErrForeignUnsupported)
		}
		d, ok := cfg.Sink.(driver)
		if !ok {
			return nil, fmt.Errorf("%w: the sink %T has no ServiceFD/Service/ServiceAdjustTimeout to be driven from the application's Polling", evlib.ErrForeignUnsupported, cfg.Sink)
		}
		b.poller, b.drv = f, d
		b.foreign = Dispatcher(f)
	default:
		return nil, fmt.Errorf("%w: want a *netpoll.Poller (github.com/panjf2000/gnet/v2/pkg/netpoll), got %T", evlib.ErrForeignUnsupported, cfg.Foreign)
	}
	var err error
	var made []sys.Waker
	for _, w := range []struct {
		to *sys.Waker
		et bool
	}{{&b.sig, false}, {&b.idle, false}, {&b.reap, false}, {&b.due, b.foreign == nil}} {
		if *w.to, err = b.newSpecial(w.et); err != nil {
			break
		}
		made = append(made, *w.to)
	}
	if err != nil {
		for _, w := range made {
			b.poller.Delete(w.R)
			w.Close()
		}
		if b.foreign == nil {
			b.poller.Close()
		}
		return nil, err
	}
	if b.foreign != nil {
		b.foreign.attach(b)
	}
	return b, nil
}

// CloseFD implements evlib.FDCloser. gnet's Polling hands the core its
// events one at a time, with a pass after each, so an fd the core closes
// may still have events in the batch being delivered; closed now, its
// number could go to an fd opened later in the batch (an accept), which
// would get them. Inside Polling it stays open until reap, written after
// it was removed, comes back: that batch was harvested after the write,
// and the one it was closed in is over. Outside Polling (Thread.Service's
// single passes end with Polling) it is closed at once.
func (b *Backend) CloseFD(fd int) {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	if b.foreign == nil && b.mode != modeLoop || b.isDown.Load() {
		unix.Close(fd)
		return
	}
	b.waiting = append(b.waiting, fd)
	if len(b.covered) == 0 {
		b.armReap()
	}
}

// armReap writes reap for the fds waiting; reapMu is held.
func (b *Backend) armReap() {
	b.covered = append(b.covered, b.waiting...)
	b.waiting = b.waiting[:0]
	b.reap.Signal()
}

// reaped closes the fds reap's write covered, now that its event came.
func (b *Backend) reaped() {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	if len(b.covered) == 0 {
		return
	}
	b.reap.Drain()
	for _, fd := range b.covered {
		unix.Close(fd)
	}
	b.covered = b.covered[:0]
	if len(b.waiting) > 0 {
		b.armReap()
	}
}

// reapAll closes every fd CloseFD kept: Polling returned, or the backend
// is closing, so no event of theirs is left to deliver.
func (b *Backend) reapAll() {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	if len(b.covered) > 0 {
		b.reap.Drain() // no event of a write whose fds are closed here
	}
	for _, fd := range append(b.covered, b.waiting...) {
		unix.Close(fd)
	}
	b.covered, b.waiting = b.covered[:0], b.waiting[:0]
}

// newSpecial creates one of our own eventfds and registers it for reading,
// edge-triggered if et.
func (b *Backend) newSpecial(et bool) (sys.Waker, error) {
	w, err := sys.NewWaker()
	if err != nil {
		return w, err
	}
	b.ctr.InterestChanges.Add(1)
	if err := b.poller.AddRead(&netpoll.PollAttachment{FD: w.R}, et); err != nil {
		w.Close()
		return w, fmt.Errorf("gnet poller: %w", err)
	}
	b.grow(w.R)
	b.fds[w.R].st = special | regBit
	return w, nil
}

func (b *Backend) grow(fd int) {
	if fd >= len(b.fds) {
		st := make([]fdState, max(fd+1, 2*len(b.fds), 64))
		copy(st, b.fds)
		b.fds = st
	}
}

func (b *Backend) lock() {
	if b.foreign != nil {
		b.fdMu.Lock()
	}
}

func (b *Backend) unlock() {
	if b.foreign != nil {
		b.fdMu.Unlock()
	}
}

// Add implements evlib.Backend.
func (b *Backend) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	if b.isDown.Load() {
		return evlib.ErrClosed
	}
	if !sys.ValidFD(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
	}
	b.lock()
	defer b.unlock()
	if fd < len(b.fds) && b.fds[fd].st&(watched|special) != 0 {
		return fmt.Errorf("%w: fd %d", evlib.ErrExist, fd)
	}
	if fd >= len(b.fds) || ev&(evlib.Readable|evlib.Writable) == 0 {
		// The kernel first where the table would grow, so that it
		// grows only for an open fd, not to any number passed in. And
		// with no interest the fd is not put in the epoll set (gnet
		// cannot register an empty mask), so check it the way
		// epoll_ctl would have.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return fmt.Errorf("%w: fd %d: %v", evlib.ErrBadFD, fd, err)
		}
		b.grow(fd)
	}
	b.fds[fd].st = watched
	if err := b.set(fd, ev); err != nil {
		b.fds[fd].st = 0
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: fd %d: epoll cannot watch this kind of file (regular files and directories are always ready)", evlib.ErrBadFD, fd)
		}
		if errors.Is(err, unix.EBADF) {
			return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
		}
		return err
	}
	return nil
}

// Modify implements evlib.Backend.
func (b *Backend) Modify(fd int, ev evlib.Events) error {
	if b.isDown.Load() {
		return evlib.ErrClosed
	}
	b.lock()
	defer b.unlock()
	if fd < 0 || fd >= len(b.fds) || b.fds[fd].st&watched == 0 {
		return fmt.Errorf("%w: fd %d", evlib.ErrNotWatched, fd)
	}
	return b.set(fd, ev)
}

// set moves a watched fd to interest ev with the fewest gnet calls.
func (b *Backend) set(fd int, ev evlib.Events) error {
	want := uint8(ev) & ioMask
	s := &b.fds[fd]
	if s.st&ioMask == want && (want == 0) == (s.st&regBit == 0) {
		return nil
	}
	pa := &netpoll.PollAttachment{FD: fd}
	reg := s.st&regBit != 0
	var err error
	switch {
	case want == 0:
		err = b.del(fd)
		reg = false
	case want == uint8(evlib.Readable) && reg:
		b.ctr.InterestChanges.Add(1)
		err = b.poller.ModRead(pa, false)
	case want == uint8(evlib.Readable):
		b.ctr.InterestChanges.Add(1)
		err = b.poller.AddRead(pa, false)
	case want == uint8(evlib.Readable|evlib.Writable) && reg:
		b.ctr.InterestChanges.Add(1)
		err = b.poller.ModReadWrite(pa, false)
	case want == uint8(evlib.Readable|evlib.Writable):
		b.ctr.InterestChanges.Add(1)
		err = b.poller.AddReadWrite(pa, false)
	default: // write only: there is no ModWrite
		if reg {
			if err = b.del(fd); err != nil {
				break
			}
			reg = false
			s.st = watched
		}
		b.ctr.InterestChanges.Add(1)
		err = b.poller.AddWrite(pa, false)
	}
	if err != nil {
		return fmt.Errorf("gnet poller fd %d: %w", fd, err)
	}
	s.st = watched | want
	if want != 0 {
		s.st |= regBit
	}
	return nil
}

func (b *Backend) del(fd int) error {
	b.ctr.InterestChanges.Add(1)
	if err := b.poller.Delete(fd); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EBADF) {
		return err
	}
	return nil
}

// Remove implements evlib.Backend.
func (b *Backend) Remove(fd int) error {
	if b.isDown.Load() {
		return nil
	}
	b.lock()
	defer b.unlock()
	if fd < 0 || fd >= len(b.fds) || b.fds[fd].st&watched == 0 {
		return nil
	}
	reg := b.fds[fd].st&regBit != 0
	b.fds[fd].st = 0
	if reg {
		if err := b.del(fd); err != nil {
			return fmt.Errorf("gnet poller delete fd %d: %w", fd, err)
		}
	}
	return nil
}

// Wake implements evlib.Waker: it makes a Poll in progress (or the next
// one) return, and makes Loop call Pass soon. Any goroutine may call it;
// wakeups coalesce until the loop consumed the last one.
func (b *Backend) Wake() error {
	if b.kick() {
		b.ctr.Wakes.Add(1)
	}
	return nil
}

// kick signals the loop: it writes sig unless a signal is outstanding
// already or the backend is closed. It reports whether it signalled.
func (b *Backend) kick() bool {
	if b.isDown.Load() || !b.sigReq.CompareAndSwap(false, true) {
		return false
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return false
	}
	b.sig.Signal()
	return true
}

// consumeSig takes the outstanding signal: drain first, then clear the
// flag. A kick that lands in between writes nothing, and needs not: the
// pass that follows every consumeSig serves what it was for. A kick after
// the clear writes again, and nothing drains that write before the next
// wait sees it.
func (b *Backend) consumeSig() {
	b.sig.Drain()
	b.sigReq.Store(false)
}

// Poll implements evlib.Backend. gnet's Polling has no timeout and never
// returns between batches, so a pass enters Polling and leaves it from an
// fd callback: sig is made readable by a timer (timeout > 0), at once
// (timeout 0), by Wake, or once the first fd was reported, and since it is
// level-triggered and not drained until Polling returned, the next batch
// holds it again. An fd seen twice in one pass therefore marks the second
// batch, where the pass stops, reporting every fd of the first batch once.
func (b *Backend) Poll(timeout time.Duration) (int, error) {
	if b.isDown.Load() {
		return 0, evlib.ErrClosed
	}
	if b.foreign != nil {
		return 0, fmt.Errorf("%w: the gnet poller belongs to the application", evlib.ErrAppDriven)
	}
	b.disarmIdle()
	b.mode, b.reports = modePoll, 0
	b.gen++
	b.ctr.Waits.Add(1)
	switch {
	case timeout == 0:
		b.kick()
	case timeout > 0 && b.pollTimer == nil:
		b.pollKicked = make(chan struct{}, 1)
		b.pollTimer = time.AfterFunc(timeout, func() { b.kick(); b.pollKicked <- struct{}{} })
	case timeout > 0:
		b.pollTimer.Reset(timeout)
	}
	err := b.poller.Polling(b.onEvent)
	if timeout > 0 && !b.pollTimer.Stop() {
		// The timer's kick is under way: let it land before consumeSig,
		// or it would end the next Poll at once, with nothing to report.
		<-b.pollKicked
	}
	b.mode = modeIdle // (CloseFD closed at once meanwhile: nothing to reap)
	b.dueOn = false
	b.consumeSig()
	if err != nil && !errors.Is(err, errStop) {
		return b.reports, fmt.Errorf("gnet Polling: %w", err)
	}
	return b.reports, nil
}

// Loop implements evlib.Looper: it runs gnet's Polling on the calling
// goroutine and calls p.Pass after every batch (see the package
// documentation), after a wakeup and when the time Pass asked for has
// come.
func (b *Backend) Loop(p evlib.Passer) error {
	if b.isDown.Load() {
		return evlib.ErrClosed
	}
	if b.foreign != nil {
		return fmt.Errorf("%w: the gnet poller belongs to the application", evlib.ErrAppDriven)
	}
	next, stop := p.Pass()
	if stop {
		return nil
	}
	b.mode, b.passer = modeLoop, p
	b.schedule(next)
	err := b.poller.Polling(b.onEvent)
	b.mode, b.passer = modeIdle, nil
	b.dueOn = false
	// Events held when Polling stopped are level-triggered: the next wait
	// reports them again.
	b.takeBatch()
	b.batch = b.batch[:0]
	b.reapAll()
	if b.timer != nil {
		b.timer.Stop()
		b.timerAt = time.Time{}
	}
	b.disarmIdle()
	if err != nil && !errors.Is(err, errStop) {
		return fmt.Errorf("gnet Polling: %w", err)
	}
	return nil
}

// Waits. gnet's epoll_wait calls happen inside Polling, out of sight, so
// Waits is approximate for this backend; it counts:
//
//   - in Poll, one when it enters Polling (its first epoll_wait) and one
//     for the second batch (exact: a pass is one or two epoll_waits);
//   - in Loop, one after every Pass that hands control back to Polling
//     with nothing due at once (next != 0), before Polling goes on: the
//     wait that may follow. So a wait is counted after every function
//     posted to the core ran (in a pass), before the loop blocks, which
//     is what the contract asks. Several such passes in one batch (fd
//     events handed over at once, see Batches) count a wait each, though
//     gnet blocks once after them: nothing in Polling's callbacks tells
//     where one epoll_wait's events end. (Telling a batch by an fd
//     reported twice, as Poll does, missed a batch of fds all new since
//     the last wait counted, and its pass counted nothing.)
//
// Not counted: the zero-timeout epoll_wait gnet makes after every batch
// when it returns nothing (gnet then blocks with the next call).

// stamp marks fd seen in Poll's current batch; an fd seen twice marks the
// second batch, which it counts.
func (b *Backend) stamp(fd int) (repeat bool) {
	if fd >= len(b.fds) {
		return false
	}
	s := &b.fds[fd]
	if s.seen == b.gen {
		b.gen++
		b.ctr.Waits.Add(1)
		repeat = true
	}
	s.seen = b.gen
	return repeat
}

// onEvent is the Polling callback of a poller the backend owns.
func (b *Backend) onEvent(fd int, e netpoll.IOEvent, _ netpoll.IOFlags) error {
	if b.mode == modePoll {
		if b.stamp(fd) {
			return errStop // the second batch: the pass is over
		}
		if fd == b.sig.R || fd == b.idle.R || fd == b.due.R || fd >= len(b.fds) || b.fds[fd].st&watched == 0 {
			return nil // sig stays readable until Poll returns
		}
		b.sink.Ready(fd, evmask.FromEpoll(e))
		b.reports++
		b.kick() // end the pass after this batch
		return nil
	}
	switch {
	case fd == b.sig.R:
		b.consumeSig()
	case fd == b.idle.R:
	case fd == b.due.R:
		b.dueOn = false
	case fd == b.reap.R:
		b.reaped()
		return nil
	case fd < len(b.fds) && b.fds[fd].st&watched != 0:
		if b.direct == 0 {
			b.hold(fd, e)
			return nil
		}
		b.direct--
		b.sink.Ready(fd, evmask.FromEpoll(e))
	default:
		return nil // removed earlier in this batch
	}
	b.deliver()
	next, stop := b.passer.Pass()
	if stop {
		return errStop
	}
	b.schedule(next)
	return nil
}

// directRun is how many fd events a batch of one hands over at once, each
// followed by a pass, before the backend holds a batch again (see
// Batches).
const directRun = 64

// event is an fd event held for the pass.
type event struct {
	fd int32
	ev netpoll.IOEvent
}

// hold keeps an fd event for the pass (see Batches). An fd the core has
// not read yet is reported again by the epoll_wait that brings due's
// event: its events merge into one.
func (b *Backend) hold(fd int, e netpoll.IOEvent) {
	b.lock()
	s := &b.fds[fd]
	if s.st&held != 0 {
		b.batch[s.at].ev |= e
		b.unlock()
		return
	}
	s.st |= held
	s.at = int32(len(b.batch))
	b.unlock()
	b.batch = append(b.batch, event{fd: int32(fd), ev: e})
	b.passDue()
}

// takeBatch returns the events held since the last pass in fd order and
// clears their held marks, so that no mark is left when the core runs.
// The caller hands them over and then empties b.batch.
func (b *Backend) takeBatch() []event {
	if len(b.batch) == 1 {
		b.direct = directRun
	}
	if len(b.batch) > 1 {
		slices.SortFunc(b.batch, func(x, y event) int { return cmp.Compare(x.fd, y.fd) })
	}
	b.lock()
	for _, e := range b.batch {
		b.fds[e.fd].st &^= held
	}
	b.unlock()
	return b.batch
}

// deliver hands the core the events held since the last pass.
func (b *Backend) deliver() {
	for _, e := range b.takeBatch() {
		// Still watched: the core may have removed it while handling one
		// before it (CloseFD keeps its number from being reused meanwhile).
		if fd := int(e.fd); b.fds[fd].st&watched != 0 {
			b.sink.Ready(fd, evmask.FromEpoll(e.ev))
		}
	}
	b.batch = b.batch[:0]
}

// passDue makes the pass that follows events run once this batch was
// delivered (see Batches). On a foreign poller Close may run on another
// goroutine meanwhile: mu and closed keep the write out of a closed fd's
// number.
func (b *Backend) passDue() {
	if b.dueOn {
		return
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if !b.closed {
		b.dueOn = true
		b.due.Signal()
	}
}

// schedule makes sure Pass runs again when it asked to: at once (idle
// stays readable), after next (one timer, moved only to an earlier time:
// a spurious early Pass is harmless) or only on an event (next < 0).
func (b *Backend) schedule(next time.Duration) {
	if next == 0 {
		if !b.idleOn {
			b.idleOn = true
			b.idle.Signal()
		}
		return
	}
	b.disarmIdle()
	if b.foreign == nil { // on a foreign poller the application waits
		b.ctr.Waits.Add(1)
	}
	if next < 0 {
		return
	}
	now := time.Now()
	at := now.Add(next)
	if !b.timerAt.IsZero() && now.Before(b.timerAt) && !at.Before(b.timerAt) {
		return // the armed timer fires first
	}
	b.timerAt = at
	if b.timer == nil {
		b.timer = time.AfterFunc(next, func() { b.kick() })
	} else {
		b.timer.Reset(next)
	}
}

func (b *Backend) disarmIdle() {
	if b.idleOn {
		b.idleOn = false
		b.idle.Drain()
	}
}

// Close implements evlib.Backend. On a foreign poller it deletes what it
// registered there and leaves the poller alone.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.isDown.Store(true)
	if b.timer != nil {
		b.timer.Stop() // under mu: see servicePass
	}
	b.mu.Unlock()
	var err error
	if b.foreign != nil {
		b.foreign.detach(b)
		b.lock()
		for fd := range b.fds {
			if b.fds[fd].st&regBit != 0 {
				b.poller.Delete(fd)
			}
			b.fds[fd].st = 0
		}
		b.unlock()
	} else {
		err = b.poller.Close()
	}
	b.reapAll()
	b.sig.Close()
	b.reap.Close()
	b.due.Close()
	if e := b.idle.Close(); err == nil {
		err = e
	}
	return err
}
