//go:build unix

package core

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/evmask"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// Service thread ownership states. A thread is owned by at most one
// goroutine at a time: the one in Run or Service, or one making a loop-only
// call while nobody services it.
const (
	modeIdle    int32 = iota // nobody owns it
	modeBusy                 // its owner runs core code or a callback
	modeWaiting              // its owner is blocked in the backend's Poll
	modeDead                 // torn down
)

const (
	rxBufSize   = 64 << 10
	acceptBatch = 64
	// acceptProbe: a listener whose queue held one connection at a time
	// accepts one per report, and tries a full loop every acceptProbe-th
	// report, to find out whether connections now queue up.
	acceptProbe = 8
	// acceptPause is how long a listener rests after EMFILE/ENFILE, so a
	// full fd table does not turn into a busy accept loop.
	acceptPause = 100 * time.Millisecond
)

// Thread is a service thread (lws' per-thread context, pt): one backend
// instance, an fd→connection table, sorted timers, and the pending work of
// forced service. All of it belongs to the goroutine servicing the thread.
type Thread struct {
	ctx   *Context
	index int
	be    evlib.Backend
	io    evlib.IO    // buffered-rx backends only
	waker evlib.Waker // backends with their own wakeup
	wfd   sys.Waker   // the core's wake fd when the backend has no waker
	ctr   evlib.Counters

	mode  atomic.Int32
	owner atomic.Uint64 // owning goroutine's goid.Token, tracked only with exactOwner
	// serviced: the owner is a goroutine in Run or Service (not one in a
	// loop-only call, which enter waits for).
	serviced atomic.Bool

	wakePending atomic.Bool
	runStop     atomic.Bool // Run's context ended: a Looper must return
	cancelReq   atomic.Bool
	wakeMu      sync.RWMutex // fences wake fd writes against its close
	wakeClosed  bool
	postMu      sync.Mutex
	posted      []func()
	postSpare   []func()
	postClosed  bool
	handoffs    []*Conn // handed over by other goroutines, to adopt (takeOver)
	handSpare   []*Conn

	epoch    time.Time
	fake     evlib.Clock // the backend's own clock, which replaces epoch's
	now      int64       // the clock as of nowFresh's batch
	nowFresh bool        // now was read since the thread last waited
	timers   timerHeap

	conns      []*Conn      // indexed by fd
	count      int          // fds in conns
	limit      int          // most fds the thread may watch
	load       atomic.Int32 // count plus room reserved for fds on their way (reserve), for placement
	listeners  []*Listener
	acceptFull bool    // listeners stopped at the fd limit
	toldFull   bool    // stopping at the limit was logged
	dialing    []*Conn // client connections not established yet
	connHead   *Conn   // every connection (not listeners), for the "all" calls

	writable, writableSpare []*Conn             // granted WRITEABLE without the kernel
	rxReady, rxSpare        []*Conn             // buffered input to deliver
	closeReq                []*Conn             // Conn.Close called inside a callback
	fdClose                 []int               // close(2) deferred to the end of the batch
	closer                  evlib.FDCloser      // the backend closes fds itself
	addAccepted             evlib.AcceptedAdder // the backend adds streams just accepted its own way
	pipes                   []relayPipe         // empty pipes kept for relays' next bursts
	fdForget                []*Conn             // closed in the batch: their FD becomes -1 after the close(2)
	adoptFailures           uint64              // connections closed because adopting them failed (logAdoptFailure)

	appDriven bool // the application's loop waits: never call Poll
	hupBare   bool // the backend reports a reset of an fd with interest 0 (evlib.CapHangupWithoutInterest)
	depth     int  // nesting of user callbacks
	// Poll-fd changes being made (watch, unwatch, modify: their
	// LOCK_POLL to UNLOCK_POLL), and the connections whose interest the
	// application changed inside one, applied once it is done.
	pollChanging int
	interestDue  []*Conn
	writing      *Conn // the connection inside RAW_WRITEABLE
	rxBuf        []byte
	destroyed    bool
}

func newThread(c *Context, index int, foreign any, limit int) (*Thread, error) {
	t := &Thread{ctx: c, index: index, limit: limit, epoch: time.Now(), wfd: sys.Waker{R: -1, W: -1}}
	be, err := c.backend.New(evlib.Config{
		Sink: (*sink)(t), Counters: &t.ctr, Thread: index, MaxFDs: c.fdLimit,
		Foreign: foreign, Logger: c.log,
	})
	if err != nil {
		return nil, fmt.Errorf("plugloop: backend %s: %w", c.backend.Name, err)
	}
	t.be = be
	t.appDriven = c.backend.Caps&evlib.CapAppDriven != 0
	t.hupBare = c.backend.Caps&evlib.CapHangupWithoutInterest != 0
	if foreign != nil && !t.appDriven {
		// Attached to a loop the application runs? Such a backend says so
		// at once, and has nothing to report yet.
		if _, err := be.Poll(0); errors.Is(err, evlib.ErrAppDriven) {
			t.appDriven = true
		}
	}
	t.io, _ = be.(evlib.IO)
	t.fake, _ = be.(evlib.Clock)
	t.closer, _ = be.(evlib.FDCloser)
	t.addAccepted, _ = be.(evlib.AcceptedAdder)
	if w, ok := be.(evlib.Waker); ok {
		t.waker = w
		return t, nil
	}
	t.wfd, err = sys.NewWaker()
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("plugloop: wake fd: %w", err)
	}
	// Registered without the poll-fd callbacks: New announces the wake fd
	// once PROTOCOL_INIT was delivered, so that comes before anything else.
	if err = be.Add(t.wfd.R, evlib.KindWake, evlib.Readable); err != nil {
		t.wfd.Close()
		be.Close()
		return nil, fmt.Errorf("plugloop: watching wake fd: %w", err)
	}
	return t, nil
}

// FDLimit returns how many fds the thread may watch (connections,
// listeners, files): at the limit its listeners stop accepting. See
// Info.FDLimit and Info.FDLimitPerThread.
func (t *Thread) FDLimit() int { return t.limit }

// Index returns the thread's index (lws' tsi).
func (t *Thread) Index() int { return t.index }

// Context returns the context the thread belongs to.
func (t *Thread) Context() *Context { return t.ctx }

// Stats returns a snapshot of the thread's counters. Any goroutine may call it.
func (t *Thread) Stats() Stats {
	c := &t.ctr
	return Stats{
		Waits: c.Waits.Load(), InterestChanges: c.InterestChanges.Load(), Wakes: c.Wakes.Load(),
		Reads: c.Reads.Load(), Writes: c.Writes.Load(), Accepts: c.Accepts.Load(), Closes: c.Closes.Load(),
		Dispatches: c.Dispatches.Load(), ForcedServices: c.ForcedServices.Load(), TimersFired: c.TimersFired.Load(),
		Splices: c.Splices.Load(), Relayed: c.Relayed.Load(),
	}
}

// ---- ownership ----

func (t *Thread) setOwner() {
	if !exactOwner {
		return // (goroutineID is goid.ID here: microseconds a call)
	}
	// Mostly the owner is already the caller (a loop's next event): a load
	// costs less than a store, which is a full fence here.
	if me := goroutineID(); t.owner.Load() != me {
		t.owner.Store(me)
	}
}

// disown forgets the owner before the thread becomes idle. Whoever takes
// it next makes it busy first and names itself after: in between, a stale
// owner would let the goroutine that held it last pass own's check as if
// it were inside a callback, and run beside the new holder. (From waiting
// only the goroutines that service the thread make it busy, and the one
// that did last is in the backend or the core, not in a loop-only call.)
func (t *Thread) disown() {
	if exactOwner {
		t.owner.Store(0)
	}
}

// own admits a loop-only call. Inside a callback (or any code of the
// owning goroutine) it returns false; on an unowned thread it takes
// ownership for the call and returns true, and the caller must release.
func (t *Thread) own() (bool, error) {
	switch t.mode.Load() {
	case modeBusy:
		if exactOwner && goroutineID() != t.owner.Load() {
			return false, t.notOwner()
		}
		return false, nil
	case modeIdle:
		if t.mode.CompareAndSwap(modeIdle, modeBusy) {
			t.setOwner()
			return true, nil
		}
		return false, t.notOwner()
	case modeDead:
		return false, ErrDestroyed
	default:
		return false, t.notOwner()
	}
}

// notOwner is own's refusal of a goroutine that does not hold the thread.
// Once Destroy was called the thread only waits for its servicing
// goroutine to tear it down: the call says ErrDestroyed then, as it will
// once that is done, and as the calls any goroutine may make say at once.
func (t *Thread) notOwner() error {
	if t.ctx.destroyReq.Load() {
		return ErrDestroyed
	}
	return ErrWrongGoroutine
}

func (t *Thread) release(took bool) {
	if took {
		t.finishEvent()
		t.leave()
		if t.appDriven && !t.dying() {
			// The call ran while the application's loop may be asleep
			// in its own wait, with a watch set and a timeout from
			// before the call: wake it, so that it picks up new fds,
			// interest, timers and forced service.
			t.signal()
		}
	}
}

// enterFromApp takes the idle thread for a call of the application's loop
// (ServiceFD, ServiceAdjustTimeout). Unlike own, it never joins a busy
// thread: without exactOwner a busy thread cannot tell its own goroutine
// inside a callback from another goroutine, and the application's loop
// must not run core code beside a goroutine making loop-only calls.
func (t *Thread) enterFromApp() bool {
	if t.mode.CompareAndSwap(modeIdle, modeBusy) {
		t.setOwner()
		return true
	}
	return false
}

// enter starts servicing the thread on the calling goroutine. A thread
// another goroutine services, or that the caller holds (a callback), is
// ErrInService. One that a loop-only call of another goroutine holds (a
// Listen beside `go ctx.Run(...)`) is waited for if waitCall says so (Run:
// that call is short, and failing would leave a Run started on a goroutine
// of its own serving nothing, with nobody to see its error), and only where
// goroutines are told apart (elsewhere a callback of such a call could wait
// for itself). Service does not wait: its caller loops, and may be the
// loop that call's callback waits for.
func (t *Thread) enter(waitCall bool) error {
	for i := 0; ; i++ {
		if t.mode.CompareAndSwap(modeIdle, modeBusy) {
			t.setOwner()
			t.serviced.Store(true)
			return nil
		}
		// Busy may mean that Destroy is tearing the thread down right now.
		if t.mode.Load() == modeDead || t.ctx.destroyReq.Load() {
			return ErrDestroyed
		}
		if !waitCall || t.serviced.Load() || !exactOwner || t.owner.Load() == goroutineID() {
			return ErrInService
		}
		if i == 0 && enterWaits != nil {
			enterWaits()
		}
		// Held by a call (or by the servicing goroutine that took it a
		// moment ago and has yet to say so: the next look tells).
		if i < 64 {
			runtime.Gosched()
		} else {
			time.Sleep(min(time.Duration(i-63)*10*time.Microsecond, time.Millisecond))
		}
	}
}

// enterWaits, when set (by tests), is called when enter starts waiting for
// a loop-only call.
var enterWaits func()

// leave gives up ownership. A Destroy or wakeup that raced with it, and
// found the thread busy, is honoured here.
func (t *Thread) leave() {
	if t.ctx.destroyReq.Load() {
		t.teardown()
		return
	}
	t.disown()
	t.serviced.Store(false)
	t.mode.Store(modeIdle)
	if t.ctx.destroyReq.Load() && t.mode.CompareAndSwap(modeIdle, modeBusy) {
		t.setOwner()
		t.teardown()
		return
	}
	if t.wakePending.Load() {
		t.signal() // whoever waits for this thread (an app's poll) must see it
	}
}

// ---- cross-goroutine entry points ----

// CancelService wakes this thread and delivers EVENT_WAIT_CANCELLED to every
// protocol on it (lws_cancel_service_pt). Any goroutine may call it; see
// Context.CancelService.
func (t *Thread) CancelService() error {
	if t.mode.Load() == modeDead || t.ctx.destroyReq.Load() {
		return ErrDestroyed
	}
	t.cancelReq.Store(true)
	return t.wake()
}

// Post runs f on the thread's goroutine during its next pass. Any goroutine
// may call it. f runs exactly once unless the context is destroyed first;
// once Destroy was called Post returns ErrDestroyed. A nil f is ErrInvalid.
func (t *Thread) Post(f func()) error {
	if f == nil {
		return ErrInvalid
	}
	t.postMu.Lock()
	if t.postClosed || t.ctx.destroyReq.Load() {
		// Once Destroy was called, posted functions are dropped: say so
		// also while the teardown waits for a busy thread.
		t.postMu.Unlock()
		return ErrDestroyed
	}
	t.posted = append(t.posted, f)
	t.postMu.Unlock()
	return t.wake()
}

// wake makes the owner look at wakePending soon. While the owner is busy it
// will look before it sleeps, so only a sleeping (or unowned) thread costs a
// system call, and wakeups that pile up before it looks cost one.
func (t *Thread) wake() error {
	if t.wakePending.Swap(true) {
		return nil
	}
	if t.mode.Load() == modeBusy {
		return nil
	}
	return t.signal()
}

func (t *Thread) signal() error {
	if t.waker != nil {
		return t.waker.Wake()
	}
	t.wakeMu.RLock()
	defer t.wakeMu.RUnlock()
	if t.wakeClosed {
		return ErrDestroyed
	}
	t.ctr.Wakes.Add(1)
	return t.wfd.Signal()
}

// ---- the service pass ----

// Service runs one pass on the calling goroutine (lws_service_tsi): due
// timers, then a wait of at most timeout for events (timeout < 0: no limit,
// 0: do not wait; the wait is cut short when forced service is pending or a
// timer falls due), then the events, cancel-service deliveries and forced
// service. It returns ErrDestroyed once the context is destroyed, and an
// error wrapping ErrBackend when the wait failed (the rest of the pass
// still ran), and ErrInService while the thread is held elsewhere (by a
// callback, or by another goroutine's call). When the application's loop
// drives the backend (the foreign mode), Service never waits: Service(0)
// is the forced service that follows the events of a wait.
func (t *Thread) Service(timeout time.Duration) error {
	if err := t.enter(false); err != nil {
		return err
	}
	alive, err := t.pass(timeout)
	if !alive {
		return ErrDestroyed
	}
	t.leave()
	return err
}

// ServiceFD hands the thread an event from a poll loop the application owns
// (lws_service_fd). For an fd the thread watches it services it and zeroes
// pfd.Revents; for any other fd it leaves pfd.Revents alone, so the
// application can offer every ready pollfd and handle those for which it
// returned nil and whose Revents are still set. Events is not consulted:
// the thread knows its own interest. It returns ErrClosed when servicing
// closed the connection: the fd was the thread's, but Revents is left
// alone, as lws leaves it (a loop that compacts its pollfd array when an
// fd is deleted may have moved another fd into pfd); ErrDestroyed once
// the context is being destroyed; and ErrInService when the thread is
// held elsewhere: by another goroutine (a loop-only call made while the
// application's loop waited; it wakes that loop when done, so the
// application just offers the fd again after its next wait) or by a
// callback on this goroutine; a nil pfd is ErrInvalid. After the events
// of one wait, the application calls Service(0) for forced service and
// timers; ServiceAdjustTimeout tells it how long it may sleep.
func (t *Thread) ServiceFD(pfd *unix.PollFd) error {
	if pfd == nil {
		return fmt.Errorf("%w: ServiceFD(nil)", ErrInvalid)
	}
	if t.ctx.destroyReq.Load() || t.mode.Load() == modeDead {
		return ErrDestroyed
	}
	if !t.enterFromApp() {
		if t.ctx.destroyReq.Load() || t.mode.Load() == modeDead {
			return ErrDestroyed
		}
		return ErrInService // another goroutine, or a callback, holds it
	}
	defer func() {
		t.finishEvent()
		t.leave()
	}()
	fd := int(pfd.Fd)
	var c *Conn
	if fd >= 0 && fd < len(t.conns) {
		c = t.conns[fd]
	}
	if c == nil && (fd != t.wfd.R || fd < 0) {
		return nil
	}
	t.nowFresh = false // each call is a batch of its own
	t.readyStep(fd, evmask.FromPoll(pfd.Revents))
	if c == nil {
		t.afterWake() // the wake fd: deliver what the wakeup was for
	}
	if c != nil && c.state == stateClosed { // not one still connecting
		return ErrClosed
	}
	pfd.Revents = 0
	return nil
}

// ServiceAdjustTimeout returns how long the thread's loop may sleep, at most
// max: 0 when forced service is pending or a timer is due, else the time to
// the next timer (lws_service_adjust_timeout). It is for the application's
// loop: while the thread is held (by another goroutine, or by a callback on
// this one) it returns 0. It returns 0 as well once the context is
// destroyed, so a loop must end when Service or ServiceFD returns
// ErrDestroyed, or it spins.
func (t *Thread) ServiceAdjustTimeout(max time.Duration) time.Duration {
	if !t.enterFromApp() {
		return 0
	}
	defer t.leave()
	t.closeFDs() // the events of the last wait are over (see finishEvent)
	if t.forcedPending() || t.wakePending.Load() {
		return 0
	}
	if when, ok := t.timers.next(); ok {
		d := time.Duration(when - t.clock())
		if d <= 0 {
			return 0
		}
		if max < 0 || d < max {
			return d
		}
	}
	return max
}

// clock returns the thread's time in nanoseconds: since the thread was
// made, or on the backend's own clock where it has one (evlib.Clock).
// Every deadline the core keeps is on it; nothing in the core reads the
// system's clock elsewhere.
func (t *Thread) clock() int64 {
	if t.fake != nil {
		return int64(t.fake.Now())
	}
	return int64(time.Since(t.epoch))
}

// tick brings t.now up to date unless it already is for this batch of
// events.
func (t *Thread) tick() {
	if !t.nowFresh {
		t.now, t.nowFresh = t.clock(), true
	}
}

// touch records activity on c for its idle timeout. Without one nothing
// reads lastActive, so the clock is not read: for a backend that passes
// once per event (evlib_netpoll) that read was a tenth of a microsecond
// per message. With one, the clock is read once per batch, when the first
// connection in it is touched.
func (t *Thread) touch(c *Conn) {
	if c.idle == nil {
		return
	}
	t.tick()
	c.lastActive = t.now
}

// dying reports that Destroy was called: from then on the thread does no
// more I/O and delivers nothing but RAW_CLOSE, the poll-fd reasons and
// PROTOCOL_DESTROY, until the servicing goroutine tears it down.
func (t *Thread) dying() bool { return t.ctx.destroyReq.Load() }

func (t *Thread) forcedPending() bool {
	return len(t.writable) > 0 || len(t.rxReady) > 0 || len(t.closeReq) > 0
}

// pass is one loop iteration. It reports false when the context was
// destroyed, in which case the thread is torn down and no longer owned.
// err is the backend's failed wait: the rest of the pass (forced service,
// timers) still runs, and the caller hands the error on (lws_service's -1),
// so that a backend that cannot wait is not polled again at full speed.
func (t *Thread) pass(timeout time.Duration) (alive bool, err error) {
	t.now, t.nowFresh = t.clock(), true
	t.runTimers()
	wait := timeout
	if t.forcedPending() || t.ctx.destroyReq.Load() {
		wait = 0
	} else if when, ok := t.timers.next(); ok {
		if d := time.Duration(when - t.now); wait < 0 || d < wait {
			wait = max(d, 0)
		}
	}
	if !t.appDriven {
		t.nowFresh = false // the wait takes time
		t.mode.Store(modeWaiting)
		if t.wakePending.Load() {
			wait = 0
		}
		_, perr := t.be.Poll(wait)
		t.mode.Store(modeBusy)
		t.setOwner() // a backend may have reported from another goroutine
		switch {
		case errors.Is(perr, evlib.ErrAppDriven):
			t.appDriven = true
		case perr != nil:
			err = fmt.Errorf("%w: %s: %w", ErrBackend, t.ctx.backend.Name, perr)
		}
		t.finishStep()
	}
	t.afterEvents()
	if t.ctx.destroyReq.Load() {
		t.teardown()
		return false, nil
	}
	return true, err
}

// afterEvents is the part of a pass that follows the events of one wait.
func (t *Thread) afterEvents() {
	t.afterWake()
	t.runAttached()
	t.forced()
	if t.timers.len() > 0 {
		t.now, t.nowFresh = t.clock(), true
		t.runTimers()
	}
	t.finishStep()
}

// makeBusy marks the thread busy as the backend hands it events. Mostly it
// is already (the rest of a batch, or Pass after the Ready before it): a
// load costs less than a store, which is a full fence here. Only the
// goroutine servicing the thread makes it busy from waiting, so nothing
// can change the mode between the two.
func (t *Thread) makeBusy() {
	if t.mode.Load() != modeBusy {
		t.mode.Store(modeBusy)
	}
}

// sink is the thread as its backend sees it (evlib.Sink, evlib.Passer):
// a type of its own, so that Ready and Pass, which only the thread's
// backend may call, are no methods of Thread an application could call.
type sink Thread

// Ready implements evlib.Sink: the backend reports fd ready for ev.
func (s *sink) Ready(fd int, ev evlib.Events) { (*Thread)(s).readyStep(fd, ev) }

// Pass implements evlib.Passer for backends that own their loop.
func (s *sink) Pass() (next time.Duration, stop bool) { return (*Thread)(s).loopPass() }

// ServiceFD, Service and ServiceAdjustTimeout are the foreign mode's entry
// points, for a backend attached to a loop the application runs whose
// callbacks must drive the thread (evlib_gnet on the application's poller).
func (s *sink) ServiceFD(pfd *unix.PollFd) error { return (*Thread)(s).ServiceFD(pfd) }

// Service is Thread.Service.
func (s *sink) Service(timeout time.Duration) error { return (*Thread)(s).Service(timeout) }

// ServiceAdjustTimeout is Thread.ServiceAdjustTimeout.
func (s *sink) ServiceAdjustTimeout(max time.Duration) time.Duration {
	return (*Thread)(s).ServiceAdjustTimeout(max)
}

// loopPass is a Looper's pass. Between calls the thread counts as waiting,
// so wakeups signal the backend.
func (t *Thread) loopPass() (next time.Duration, stop bool) {
	t.makeBusy()
	t.setOwner()
	t.finishStep()
	t.afterEvents()
	if t.ctx.destroyReq.Load() || t.runStop.Load() {
		return 0, true
	}
	t.mode.Store(modeWaiting)
	next = -1
	if t.forcedPending() || t.wakePending.Load() {
		next = 0
	} else if when, ok := t.timers.next(); ok {
		t.tick() // a timer set in this pass's callbacks
		next = max(time.Duration(when-t.now), 0)
	}
	t.nowFresh = false // the backend waits, or passes again for other events
	return next, false
}

func (t *Thread) afterWake() {
	if !t.wakePending.Load() {
		return
	}
	t.wakePending.Store(false)
	t.postMu.Lock()
	fns := t.posted
	t.posted = t.postSpare[:0]
	hs := t.handoffs
	t.handoffs = t.handSpare[:0]
	t.postMu.Unlock()
	// Handovers first: a function posted after a handover finds the
	// connection adopted.
	for i, c := range hs {
		t.takeOver(c)
		hs[i] = nil
	}
	t.handSpare = hs[:0]
	for i, f := range fns {
		if !t.dying() {
			t.depth++
			f()
			t.depth--
			t.endCallback()
		}
		fns[i] = nil
	}
	t.postSpare = fns[:0]
	if t.cancelReq.Swap(false) {
		for _, p := range t.ctx.protocols {
			if t.dying() {
				break
			}
			_ = t.callback(Event{Reason: ReasonEventWaitCancelled, Protocol: p})
		}
	}
}

// forced delivers what needs no network event: buffered input of
// connections that may receive, and WRITEABLE to connections that asked for
// it and are not known to be blocked.
func (t *Thread) forced() {
	if len(t.rxReady) == 0 && len(t.writable) == 0 || t.dying() {
		return
	}
	t.ctr.ForcedServices.Add(1)
	if len(t.rxReady) > 0 {
		list := t.rxReady
		t.rxReady = t.rxSpare[:0]
		for i, c := range list {
			list[i] = nil
			c.inRxList = false
			if c.state == stateOpen && !c.rxPaused && !t.dying() {
				t.deliverBuffered(c)
				t.endCallback() // a close asked for in a poll-fd callback (see pollCallback)
			}
		}
		t.rxSpare = list[:0]
	}
	if len(t.writable) > 0 {
		list := t.writable
		t.writable = t.writableSpare[:0]
		for i, c := range list {
			list[i] = nil
			c.inWritableList = false
			if c.state == stateOpen && c.wantWritable && !c.writeBlocked && !t.dying() {
				t.deliverWriteable(c)
				t.endCallback()
			}
		}
		t.writableSpare = list[:0]
	}
}

func (t *Thread) runTimers() {
	for !t.dying() {
		tm := t.timers.pop(t.now)
		if tm == nil {
			break
		}
		t.ctr.TimersFired.Add(1)
		t.depth++
		tm.fn()
		t.depth--
		t.endCallback()
	}
	// Timers run outside any batch of events, so what they closed is
	// closed now: the end of the next batch may never come to an idle loop.
	if len(t.fdClose) > 0 {
		t.finishStep()
	}
}

// finishStep applies what was deferred to the end of a batch: closes
// requested inside callbacks, then the close(2) of every closed fd. Keeping
// fds open until the batch is done means a number cannot be reused while
// stale events for it may still be in the batch.
func (t *Thread) finishStep() {
	t.endCallback()
	t.closeFDs()
}

// finishEvent is finishStep after one of the events of an application's
// wait (ServiceFD), or after a loop-only call between them: the rest of
// the wait's events may follow, so an app-driven thread keeps the fds it
// closed open until the application's Service(0) or ServiceAdjustTimeout
// says they are over (a backend that closes fds itself knows better).
func (t *Thread) finishEvent() {
	t.endCallback()
	if !t.appDriven || t.closer != nil {
		t.closeFDs()
	}
}

// closeFDs closes the fds closed connections left, or hands them to the
// backend to close (evlib.FDCloser).
func (t *Thread) closeFDs() {
	if len(t.fdClose) > 0 {
		t.ctx.fds.drop(t.fdClose...)
	}
	for _, fd := range t.fdClose {
		if t.closer != nil {
			t.closer.CloseFD(fd)
		} else {
			unix.Close(fd)
		}
		t.ctr.Closes.Add(1)
	}
	t.fdClose = t.fdClose[:0]
	for i, c := range t.fdForget {
		c.fdClosed.Store(true) // its number may be another file's from now on
		t.fdForget[i] = nil
	}
	t.fdForget = t.fdForget[:0]
}

// ---- dispatch (evlib.Sink) ----

// readyStep is one fd's report from the backend.
func (t *Thread) readyStep(fd int, ev evlib.Events) {
	t.makeBusy()
	t.setOwner()
	t.ready(fd, ev)
	// One fd's event is a step: a close asked for in a poll-fd callback
	// of it is done before the next fd's callbacks.
	t.endCallback()
}

func (t *Thread) ready(fd int, ev evlib.Events) {
	if t.dying() {
		return // the rest of the batch is for connections about to close
	}
	var c *Conn
	if fd >= 0 && fd < len(t.conns) {
		c = t.conns[fd]
	}
	if c == nil {
		if fd == t.wfd.R && fd >= 0 {
			t.wfd.Drain()
		}
		return // stale: closed earlier in this batch
	}
	if c.listener != nil {
		t.accept(c)
		return
	}
	if c.state == stateConnecting {
		t.onConnect(c, fd) // one of its racing connects
		return
	}
	if ev&evlib.Writable != 0 {
		t.onWritable(c)
	}
	if ev&(evlib.Readable|evlib.Hangup|evlib.Error) != 0 {
		t.onReadable(c, ev)
	}
}

func (t *Thread) read(fd int, p []byte) (int, error) {
	t.ctr.Reads.Add(1)
	if t.io != nil {
		return t.io.Read(fd, p)
	}
	return sys.Read(fd, p)
}

func (t *Thread) write(fd int, p []byte) (int, error) {
	t.ctr.Writes.Add(1)
	if t.io != nil {
		return t.io.Write(fd, p)
	}
	return sys.Write(fd, p)
}

func wouldBlock(err error) bool {
	return sys.WouldBlock(err) || errors.Is(err, evlib.ErrWouldBlock)
}

func (t *Thread) onReadable(c *Conn, ev evlib.Events) {
	if c.state != stateOpen || t.dying() {
		return
	}
	if c.hup {
		if t.hupBare && c.watchedBare() {
			t.halfOpenEnd(c)
			return
		}
		// Its input has ended; only an error can be news (and a backend
		// that keeps reporting one would keep the loop awake).
		if ev&evlib.Error != 0 {
			t.closeConn(c, t.errorAfterEnd(c))
		}
		return
	}
	if c.draining {
		t.discardInput(c)
		return
	}
	switch c.kind {
	case evlib.KindFile:
		t.onFileReadable(c, ev)
		return
	case evlib.KindDatagram:
		t.onDatagramReadable(c)
		return
	}
	if c.relayOut != nil {
		t.relayReadable(c.relayOut, ev)
		return
	}
	if c.rxPaused {
		if ev&(evlib.Hangup|evlib.Error) != 0 {
			t.readAll(c) // learn how it ended without losing input
		}
		if c.state == stateOpen && c.interest&evlib.Readable != 0 {
			t.setInterest(c, c.interest&^evlib.Readable)
		}
		return
	}
	if len(c.rxbuf) > 0 {
		t.deliverBuffered(c)
		if c.state != stateOpen || c.rxPaused || t.dying() {
			return
		}
	}
	if t.rxBuf == nil {
		t.rxBuf = make([]byte, rxBufSize)
	}
	n, err := t.read(c.fd, t.rxBuf)
	switch {
	case n > 0:
		t.touch(c)
		t.deliver(c, t.rxBuf[:n])
	case err == nil:
		t.hangup(c, io.EOF)
	case wouldBlock(err):
	default:
		t.closeConn(c, &OpError{Op: "read", Err: err})
	}
}

// readAll moves what the kernel holds into the connection's buffer until it
// would block or the stream ended, so a paused connection whose peer hung
// up still gets its input before it closes.
func (t *Thread) readAll(c *Conn) {
	var buf [16 << 10]byte
	for {
		n, err := t.read(c.fd, buf[:])
		switch {
		case n > 0:
			c.rxbuf = append(c.rxbuf, buf[:n]...)
			continue
		case err == nil:
			t.hangup(c, io.EOF)
		case wouldBlock(err):
		default:
			t.hangup(c, &OpError{Op: "read", Err: err})
		}
		return
	}
}

// hangup records that the stream ended, why being io.EOF for the peer's
// orderly end. Buffered input is still delivered and, after an orderly
// end, the application may still answer it: the end of a peer's input is
// not the end of its reading. The connection closes once nothing is left
// (see settleHup), within CloseTimeout, unless its protocol allows it to
// stay half open.
func (t *Thread) hangup(c *Conn, why error) {
	if why == io.EOF {
		why = t.endOfStream(c)
	}
	c.hup, c.hupErr = true, why
	if c.draining {
		// Close in the RAW_RX of the read before: the end it waits for.
		t.drainEnd(c, why)
		return
	}
	t.settleHup(c)
	if c.state != stateOpen || c.closeReq || c.halfOpen() {
		return
	}
	if c.bound == nil || c.bound.idx < 0 { // (Close's bound, if draining, came first)
		c.setBound(why)
	}
}

// settleHup decides, whenever it may have changed, what becomes of a
// connection whose stream ended: it closes with the end's reason once
// nothing is left to do for it — no input to deliver, and after an orderly
// end no WRITEABLE asked for and no output held (after a reset nothing
// can reach the peer). Until then it is watched only while a write is
// blocked: its end of stream stays readable, and a hang-up is reported
// whatever the interest, so a watched fd would end every wait at once.
//
// With Protocol.AllowHalfOpen an orderly end closes nothing (see
// settleHalfOpen).
func (t *Thread) settleHup(c *Conn) {
	if !c.hup || c.state != stateOpen || c.closeReq || c.draining {
		return
	}
	if c.relayOut != nil {
		// A relay's source whose input had ended when RelayTo was
		// called: its end is settled when the relay ends (relayDone),
		// so that RAW_RX_END, or the close, never comes while the relay
		// still owns the target's output.
		return
	}
	if c.halfOpen() {
		t.settleHalfOpen(c)
		return
	}
	answering := errors.Is(c.hupErr, io.EOF) && (c.wantWritable || len(c.out) > 0 || c.relayIn != nil)
	switch {
	case !answering && len(c.rxbuf) == 0:
		t.requestClose(c, c.hupErr)
	case answering && c.writeBlocked:
		t.setInterest(c, evlib.Writable)
	default:
		if answering {
			t.grantWritable(c)
		}
		t.park(c)
	}
}

// grantWritable grants a WRITEABLE a hung-up connection waits for in the
// next forced service: the kernel no longer reports writability to it, out
// of the poll set or watched for nothing.
func (t *Thread) grantWritable(c *Conn) {
	if c.wantWritable && !c.inWritableList {
		c.inWritableList = true
		t.writable = append(t.writable, c)
	}
}

// settleHalfOpen is settleHup for a connection whose peer ended in order
// and whose protocol allows it to stay half open: once its input was all
// delivered and rx is on, RAW_RX_END, once; then it stays open until the
// application ends its side too (CloseWrite, whose output has left) or
// closes it. Like a connection answering after the end, it is watched for
// writability only while a write is blocked; otherwise, after RAW_RX_END
// and where the backend reports a reset without interest
// (evlib.CapHangupWithoutInterest), it stays watched with interest 0, so
// that its peer's reset closes it at once (see halfOpenEnd). A socket whose
// peer only ended its stream reports nothing with interest 0 (POLLHUP
// needs both directions shut), so that costs the loop nothing. Elsewhere
// it is parked, and learns of a reset at its next write.
func (t *Thread) settleHalfOpen(c *Conn) {
	switch {
	case c.rxEnded || len(c.rxbuf) > 0 || c.rxPaused || t.dying():
	case t.depth > 0:
		// Inside a callback (CloseWrite in RAW_RX, where the backend
		// had read the end with the input): RAW_RX_END waits for forced
		// service, so that no callback of the connection runs inside
		// another, and the one running sees its CloseWrite come first.
		t.queueRx(c)
	default:
		c.rxEnded, c.wrFirst = true, c.wrClosed
		if err := t.callback(Event{Reason: ReasonRawRxEnd, Conn: c}); err != nil {
			t.closeConn(c, err)
			return
		}
		if c.state != stateOpen || c.closeReq || c.draining {
			return
		}
	}
	switch {
	case c.rxEnded && c.wrClosed && len(c.out) == 0:
		var why error
		if c.wrFirst {
			why = io.EOF // the peer's end came last: as without AllowHalfOpen
		}
		t.requestClose(c, why)
	case c.writeBlocked:
		t.setInterest(c, evlib.Writable)
	default:
		t.grantWritable(c)
		if t.hupBare && c.rxEnded && !c.wrClosed && !c.endQuiet {
			t.watchBare(c)
		} else {
			t.park(c)
		}
	}
}

// watchedBare reports whether c is a half-open connection watched with
// interest 0 for its peer's reset (see settleHalfOpen).
func (c *Conn) watchedBare() bool {
	return c.rxEnded && !c.parked && c.interest == 0 && c.halfOpen()
}

// watchBare watches a half-open connection with interest 0 (see
// settleHalfOpen), adding it back to the backend if it was parked.
func (t *Thread) watchBare(c *Conn) {
	if !c.parked {
		t.setInterest(c, 0)
		return
	}
	c.parked = false
	if err := t.watch(c.fd, c, c.kind, 0); err != nil {
		c.parked = true
		t.requestClose(c, &OpError{Op: "watch", Err: err})
	}
}

// halfOpenEnd handles a Hangup or Error reported for a half-open
// connection watched with interest 0: its peer reset it, or an error came
// (a timeout of data the kernel still held for the peer), and it closes
// with the socket's error; or the report says nothing new (a backend may
// report the peer's orderly end itself once, and a unix socket whose peer
// closed for good hangs up with no error), and it is ignored. Asking the
// socket is one system call, made only on such a report. A second report
// with nothing to tell parks the connection, so a hang-up reported level
// cannot keep the loop awake; as a socket that is no socket (a pipe
// adopted as a stream) does at once.
func (t *Thread) halfOpenEnd(c *Conn) {
	e, err := sockErr(c.fd)
	if e != 0 {
		t.closeConn(c, &OpError{Op: "read", Err: e})
		return
	}
	if err == nil && !c.endQuiet {
		c.endQuiet = true
		return
	}
	c.endQuiet = true
	t.park(c)
}

// errorAfterEnd is why a connection whose input ended closes on an Error
// report: the socket's pending error, or a reset where the backend took it
// (netpoll's read) and the end read was orderly; never that orderly end,
// which would pass what the peer broke off for a whole stream.
func (t *Thread) errorAfterEnd(c *Conn) error {
	if e, _ := sockErr(c.fd); e != 0 {
		return &OpError{Op: "read", Err: e}
	}
	if errors.Is(c.hupErr, io.EOF) {
		return &OpError{Op: "read", Err: unix.ECONNRESET}
	}
	return c.hupErr
}

// sockErr takes a socket's pending error (SO_ERROR; 0 for none, and err
// for an fd that is no socket). Linux leaves EPIPE for a reset that came
// after the peer's FIN (in CLOSE_WAIT), where a read says end of stream:
// that is a reset too.
func sockErr(fd int) (unix.Errno, error) {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if e := unix.Errno(v); err == nil && e == unix.EPIPE {
		return unix.ECONNRESET, nil
	}
	return unix.Errno(v), err
}

// shutdown shuts the write side of a stream down, through the backend
// where it does the I/O.
func (t *Thread) shutdown(c *Conn) error {
	c.shutWR = true
	if t.io != nil {
		return t.io.Shutdown(c.fd)
	}
	return unix.Shutdown(c.fd, unix.SHUT_WR)
}

// shutWrite shuts the write side of a connection down for CloseWrite, whose
// output has left; a failure closes it.
func (t *Thread) shutWrite(c *Conn) error {
	if err := t.shutdown(c); err != nil {
		if err == unix.ENOTCONN {
			// A TCP stream that was connected says so only once
			// its peer reset it (or it timed out): report the
			// cause, as a read would have.
			if e, _ := sockErr(c.fd); e != 0 {
				err = e
			} else {
				err = unix.ECONNRESET
			}
		}
		err = &OpError{Op: "shutdown", Err: err}
		t.requestClose(c, err)
		return err
	}
	if c.interest&evlib.Writable != 0 {
		t.setInterest(c, c.interest&^evlib.Writable)
	}
	return nil
}

// deliver hands fresh bytes to RAW_RX, in RxChunk pieces. What is left when
// the callback pauses rx is kept, in order, for resume.
func (t *Thread) deliver(c *Conn, p []byte) {
	chunk := c.proto.RxChunk
	for len(p) > 0 {
		// A close requested, or waiting to drain, ends RAW_RX: nothing
		// but RAW_CLOSE follows Close.
		if c.state != stateOpen || c.closeReq || c.draining || t.dying() {
			return
		}
		if r := c.relayOut; r != nil {
			// RelayTo in RAW_RX: the rest of this read is input c kept,
			// which goes to the target first, as RelayTo does with rxbuf.
			r.dst.out = append(r.dst.out, p...)
			t.waitWritable(r.dst)
			return
		}
		if c.rxPaused {
			c.rxbuf = append(c.rxbuf, p...)
			return
		}
		q := p
		if chunk > 0 && len(q) > chunk {
			q = q[:chunk]
		}
		p = p[len(q):]
		if err := t.callback(Event{Reason: ReasonRawRX, Conn: c, Data: q}); err != nil {
			t.closeConn(c, err)
			return
		}
	}
}

func (t *Thread) deliverBuffered(c *Conn) {
	if r := c.relayOut; r != nil {
		// A relay's source has no buffered input: forced service
		// (relayResume) pulls.
		if r.held == 0 {
			t.relayPull(r)
		}
		return
	}
	chunk := c.proto.RxChunk
	for len(c.rxbuf) > 0 && c.state == stateOpen && !c.rxPaused && !c.closeReq && !t.dying() {
		q := c.rxbuf
		if chunk > 0 && len(q) > chunk {
			q = q[:chunk]
		}
		c.rxbuf = c.rxbuf[len(q):]
		if err := t.callback(Event{Reason: ReasonRawRX, Conn: c, Data: q}); err != nil {
			t.closeConn(c, err)
			return
		}
	}
	if len(c.rxbuf) == 0 && !t.dying() {
		c.rxbuf = nil
		t.settleHup(c)
	}
}

func (t *Thread) queueRx(c *Conn) {
	if !c.inRxList {
		c.inRxList = true
		t.rxReady = append(t.rxReady, c)
	}
}

func (t *Thread) onWritable(c *Conn) {
	if c.state != stateOpen {
		return
	}
	if c.relayIn != nil {
		t.relayWritable(c.relayIn)
		return
	}
	if len(c.out) > 0 && !t.flush(c) {
		return
	}
	c.writeBlocked = false
	if c.draining {
		t.drained(c)
		return
	}
	if c.wrClosed && !c.shutWR && t.shutWrite(c) != nil {
		return
	}
	if c.wantWritable {
		t.deliverWriteable(c)
	}
	// Write interest stays armed while it is wanted, so a connection that
	// keeps streaming pays no interest change per message.
	if c.state == stateOpen && !c.writeBlocked && !c.wantWritable && c.interest&evlib.Writable != 0 {
		t.setInterest(c, c.interest&^evlib.Writable)
	}
	t.settleHup(c)
}

// waitWritable waits for c's writability: its socket refused bytes (a
// partial Write, or a relay's target).
func (t *Thread) waitWritable(c *Conn) {
	c.writeBlocked = true
	if c.interest&evlib.Writable == 0 {
		t.setInterest(c, c.interest|evlib.Writable)
	}
}

// flush writes what a partial write left; it reports whether all went out.
func (t *Thread) flush(c *Conn) bool {
	n, err := t.write(c.fd, c.out)
	if n > 0 {
		c.out = c.out[n:]
		t.touch(c)
	}
	if err != nil && !wouldBlock(err) {
		t.closeConn(c, &OpError{Op: "write", Err: err})
		return false
	}
	if len(c.out) > 0 {
		return false
	}
	c.out = nil
	return true
}

func (t *Thread) deliverWriteable(c *Conn) {
	c.wantWritable = false
	prev := t.writing
	t.writing, c.wrote = c, false
	err := t.callback(Event{Reason: c.reason(ReasonRawWriteable), Conn: c})
	t.writing = prev
	if err != nil {
		t.closeConn(c, err)
		return
	}
	t.settleHup(c)
}

// callback runs a protocol callback. Closes requested from inside it are
// applied when the outermost callback returns.
func (t *Thread) callback(ev Event) error {
	err := t.runCallback(ev)
	t.endCallback()
	return err
}

// runCallback runs a protocol callback and leaves the closes it requested
// queued.
func (t *Thread) runCallback(ev Event) error {
	if ev.Protocol == nil {
		ev.Protocol = ev.Conn.proto
	}
	if ev.Reason != ReasonProtocolInit && ev.Reason != ReasonProtocolDestroy {
		ev.Thread = t
	}
	t.depth++
	err := ev.Protocol.Callback(ev)
	t.depth--
	t.ctr.Dispatches.Add(1)
	return err
}

func (t *Thread) endCallback() {
	if t.depth != 0 || len(t.closeReq) == 0 {
		return
	}
	// The closes' own callbacks (LOCK_POLL, RAW_CLOSE) end at depth 0
	// too: counted as one, they leave the queue to this loop, so that one
	// close does not run inside another's LOCK_POLL/UNLOCK_POLL. A close
	// a RAW_CLOSE asks for joins the queue and runs next.
	t.depth++
	for len(t.closeReq) > 0 {
		c := t.closeReq[0]
		t.closeReq = t.closeReq[1:]
		if c.state == stateConnecting {
			t.dialFailed(c, c.closeErr) // given up in a poll-fd callback
			continue
		}
		t.closeConn(c, c.closeErr)
	}
	t.depth--
	t.closeReq = nil
}

// ---- fd registration, with the poll-fd callbacks ----

// pollCallback tells the application of a change to its watch set. A close
// it asks for waits for the end of the operation that made the change (the
// callback or the pass around it, or the call from outside the loop): run
// at once, it would close a connection halfway through its adoption or its
// connect, which then went on as if it were open.
func (t *Thread) pollCallback(r Reason, c *Conn, fd int, ev, prev evlib.Events, n int) {
	_ = t.runCallback(Event{Reason: r, Conn: c, Protocol: t.ctx.protocols[0],
		Poll: PollArgs{FD: fd, Events: ev, PrevEvents: prev}, Len: n})
}

func (t *Thread) watch(fd int, c *Conn, kind evlib.Kind, ev evlib.Events) error {
	t.pollChanging++
	t.pollCallback(ReasonLockPoll, c, fd, 0, 0, 1)
	var err error
	if c != nil && c.accepted && t.addAccepted != nil {
		err = t.addAccepted.AddAccepted(fd, ev)
	} else {
		err = t.be.Add(fd, kind, ev)
	}
	if c != nil {
		c.accepted = false // read from here on
	}
	if err == nil {
		t.pollCallback(ReasonAddPollFD, c, fd, ev, 0, 0)
	}
	t.pollCallback(ReasonUnlockPoll, c, fd, 0, 0, 1)
	t.pollChanged()
	return err
}

func (t *Thread) unwatch(fd int, c *Conn, ev evlib.Events) {
	t.pollChanging++
	t.pollCallback(ReasonLockPoll, c, fd, 0, 0, 1)
	if err := t.be.Remove(fd); err != nil {
		t.ctx.log.Warn("plugloop: backend remove failed", "fd", fd, "err", err)
	}
	t.pollCallback(ReasonDelPollFD, c, fd, 0, ev, 0)
	t.pollCallback(ReasonUnlockPoll, c, fd, 0, 0, 1)
	t.pollChanged()
}

// pollChanged ends a poll-fd change (after its UNLOCK_POLL) and, the last
// one done, makes the changes of interest the application asked for inside
// it, each reported in a bracket of its own.
func (t *Thread) pollChanged() {
	t.pollChanging--
	for t.pollChanging == 0 && len(t.interestDue) > 0 {
		c := t.interestDue[0]
		t.interestDue[0] = nil
		t.interestDue = t.interestDue[1:]
		c.interestDue = false
		if c.state == stateClosed {
			continue // unwatched by its close, with what it had
		}
		// From what the backend has to what the core wants.
		switch ev := c.interest; {
		case c.dueWatched && c.parked:
			t.unwatch(c.fd, c, c.dueFrom)
		case c.dueWatched:
			c.interest = c.dueFrom
			t.setInterest(c, ev)
		case !c.parked:
			c.parked, c.interest = true, 0
			t.setInterest(c, ev)
		}
	}
	if len(t.interestDue) == 0 {
		t.interestDue = nil
	}
}

// setInterest changes what the backend watches the connection for. Callers
// keep this lazy: it runs only on a real change, never per message.
func (t *Thread) setInterest(c *Conn, ev evlib.Events) {
	if c.interest == ev {
		return
	}
	if t.pollChanging > 0 {
		// Asked for by the application inside a poll-fd callback: made
		// once the change being reported is done (pollChanged), so that
		// the changes the application is told of never nest, each in
		// its own LOCK_POLL and UNLOCK_POLL, and the backend is not
		// modified for an fd it is adding or removing. The core goes on
		// from the interest it wants.
		t.changeDue(c)
		c.parked, c.interest = false, ev
		return
	}
	if c.parked {
		c.parked, c.interest = false, ev
		if err := t.watch(c.fd, c, c.kind, ev); err != nil {
			c.parked, c.interest = true, 0
			t.requestClose(c, &OpError{Op: "watch", Err: err})
		}
		return
	}
	prev := c.interest
	c.interest = ev
	if err := t.modify(c, c.fd, ev, prev); err != nil {
		t.requestClose(c, &OpError{Op: "modify interest", Err: err})
	}
}

// modify has the backend watch fd, one of c's, for ev instead of prev.
func (t *Thread) modify(c *Conn, fd int, ev, prev evlib.Events) error {
	t.pollChanging++
	t.pollCallback(ReasonLockPoll, c, fd, 0, 0, 0)
	t.pollCallback(ReasonChangeModePollFD, c, fd, ev, prev, 0)
	err := t.be.Modify(fd, ev)
	t.pollCallback(ReasonUnlockPoll, c, fd, 0, 0, 0)
	t.pollChanged()
	return err
}

// park takes a connection out of the backend while no event can be
// handled for it: its stream ended with input still to deliver, or a
// paused file hung up. Backends, and an application's poll loop, report a
// hang-up whatever the interest, so an fd left watched would end every
// wait at once. setInterest watches it again.
func (t *Thread) park(c *Conn) {
	if c.parked {
		return
	}
	if t.pollChanging > 0 {
		// Inside a poll-fd callback (see setInterest).
		t.changeDue(c)
		c.parked, c.interest = true, 0
		return
	}
	// Parked before its DEL_POLL_FD: what the application asks for there
	// watches it again, once the removal is done.
	ev := c.interest
	c.parked, c.interest = true, 0
	t.unwatch(c.fd, c, ev)
}

// changeDue records, before its first change inside a poll-fd change, what
// the backend has for c, for pollChanged to bring it to what the core wants
// once that change is done.
func (t *Thread) changeDue(c *Conn) {
	if !c.interestDue {
		c.interestDue, c.dueWatched, c.dueFrom = true, !c.parked, c.interest
		t.interestDue = append(t.interestDue, c)
	}
}

// ---- connections ----

// adopt adopts fd as a new connection (or listener, l) of t, which the
// caller owns. reserved: the caller holds room on t for it.
func (t *Thread) adopt(fd int, kind evlib.Kind, p *Protocol, l *Listener, o *adoptOptions, reserved bool) (*Conn, error) {
	c := &Conn{t: t, fd: fd, kind: kind, proto: p, listener: l, user: o.user}
	if err := t.adoptConn(c, o, reserved); err != nil {
		return nil, err
	}
	return c, nil
}

// insert puts c (whose fd is set) in the fd table and has the backend watch
// it for ev. reserved: the caller holds room on t for it (see reserve);
// otherwise insert takes room itself. On failure the room goes back.
func (t *Thread) insert(c *Conn, ev evlib.Events, reserved bool) error {
	// Set before its ADD_POLL_FD, where the application may change it
	// (CallbackOnWritable, RxFlowControl).
	prev := c.interest
	c.interest = ev
	if err := t.insertFD(c, c.fd, ev, reserved); err != nil {
		c.interest = prev
		return err
	}
	if c.listener != nil {
		t.listeners = append(t.listeners, c.listener)
	}
	return nil
}

// insertFD is insert for an fd of c's that need not be c.fd: a client
// connection's racing connects each have one (see dialNext), all routed
// to c, and the interest is the caller's to keep.
func (t *Thread) insertFD(c *Conn, fd int, ev evlib.Events, reserved bool) error {
	var err error
	switch {
	case t.dying():
		err = ErrDestroyed
	case !sys.ValidFD(fd):
		err = fmt.Errorf("%w: fd %d", ErrBadFD, fd)
	case fd < len(t.conns) && t.conns[fd] != nil:
		err = fmt.Errorf("%w: fd %d is already adopted", ErrBadFD, fd)
	case !reserved && !t.reserve():
		return ErrFDLimit
	}
	if err != nil {
		if reserved {
			t.giveBack(true)
		}
		return err
	}
	if fd >= len(t.conns) {
		n := max(2*len(t.conns), fd+1, 64)
		conns := make([]*Conn, n)
		copy(conns, t.conns)
		t.conns = conns
	}
	if err := t.watch(fd, c, c.kind, ev); err != nil {
		t.giveBack(true)
		return fmt.Errorf("plugloop: watching fd %d: %w", fd, err)
	}
	if t.dying() {
		// Destroy was called in its ADD_POLL_FD: nothing is adopted from
		// then on (no RAW_ADOPT after Destroy), so it is taken out again
		// and the caller keeps fd, as for any failed adoption.
		if fd == c.fd {
			ev = c.interest // as its ADD_POLL_FD may have changed it
		}
		t.unwatch(fd, c, ev)
		t.giveBack(true)
		return ErrDestroyed
	}
	t.ctx.fds.add(fd)
	t.conns[fd] = c
	t.count++
	return nil
}

// established makes an inserted connection live: the connection list,
// per-IP accounting, the idle timeout, RAW_ADOPT and any read buffer.
func (t *Thread) established(c *Conn, o *adoptOptions) (*Conn, error) {
	c.state = stateOpen
	c.next = t.connHead
	if t.connHead != nil {
		t.connHead.prev = c
	}
	t.connHead = c
	if o.peerIP.IsValid() {
		c.peerIP = o.peerIP // counted by the accepting thread
	}
	if d := t.ctx.info.IdleTimeout; d > 0 && c.kind == evlib.KindStream {
		// From here: a client connection was made long before, and a
		// handed-over one waited for its thread.
		c.lastActive = t.clock()
		c.idle = &Timer{t: t, idx: -1, fn: func() { t.checkIdle(c) }}
		t.timers.schedule(c.idle, deadline(c.lastActive, d))
	}
	// Kept before RAW_ADOPT, so that a relay started there passes it on
	// first (RelayTo moves what the source kept).
	c.rxbuf = append(c.rxbuf, o.readbuf...)
	if err := t.callback(Event{Reason: c.reason(ReasonRawAdopt), Conn: c}); err != nil {
		t.closeConn(c, err)
		return nil, fmt.Errorf("%w: %w", errAdoptRefused, err)
	}
	switch {
	case len(c.rxbuf) == 0:
	case c.state != stateOpen || c.closeReq || c.draining:
		// Closed already (in its ADD_POLL_FD, or in RAW_ADOPT): Close
		// drops the input not delivered, and a graceful one drains with
		// nothing but RAW_CLOSE to come.
		c.rxbuf = nil
	default:
		t.queueRx(c)
	}
	return c, nil
}

func (t *Thread) checkIdle(c *Conn) {
	d := int64(t.ctx.info.IdleTimeout)
	if t.now-c.lastActive >= d {
		t.closeConn(c, ErrTimeout)
		return
	}
	t.timers.schedule(c.idle, deadline(c.lastActive, time.Duration(d)))
}

func (t *Thread) requestClose(c *Conn, why error) {
	if c.state != stateOpen || c.closeReq {
		return
	}
	if t.depth == 0 {
		t.closeConn(c, why)
		return
	}
	c.closeReq, c.closeErr = true, why
	if c.relayOut != nil || c.relayIn != nil {
		t.endRelays(c) // at once: closing, it takes part in nothing more
	}
	t.closeReq = append(t.closeReq, c)
}

// closeConn closes a connection exactly once: unregister, RAW_CLOSE, and
// close(2) at the end of the batch.
func (t *Thread) closeConn(c *Conn, why error) {
	if c.state != stateOpen {
		return
	}
	if c.closeReq {
		// A close asked for first (Abort in a poll-fd callback of the
		// read that met the peer's reset) keeps the reason it promised.
		why = c.closeErr
	}
	c.state = stateClosed
	if c.relayOut != nil || c.relayIn != nil {
		t.endRelays(c)
	}
	for _, tm := range []*Timer{c.timer, c.timeout, c.bound, c.idle} {
		if tm != nil {
			t.timers.remove(tm)
		}
	}
	if !c.parked {
		t.unwatch(c.fd, c, c.interest)
	}
	t.conns[c.fd] = nil
	t.count--
	t.fdClose = append(t.fdClose, c.fd)
	t.fdForget = append(t.fdForget, c)
	c.rxbuf, c.out = nil, nil
	if l := c.listener; l != nil {
		if i := slices.Index(t.listeners, l); i >= 0 {
			t.listeners = slices.Delete(t.listeners, i, i+1)
		}
		// Here, not in Listener.Close, so that Destroy does it too.
		if l.resume != nil {
			t.timers.remove(l.resume)
		}
		if l.unixPath != "" && !l.keepFile {
			os.Remove(l.unixPath)
		}
		t.giveBack(true)
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		t.connHead = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
	if c.peerIP.IsValid() {
		t.ctx.perIP.add(c.peerIP, -1)
	}
	t.giveBack(true)
	_ = t.callback(Event{Reason: c.reason(ReasonRawClose), Conn: c, Err: why})
}

// accept takes connections from a listener the backend reported readable.
// Accepting until accept(2) says EAGAIN costs a system call per report that
// finds nothing more, which, when connections come one at a time (the
// common case for a server faster than its clients), is one more per
// connection. The report is level-triggered, so a connection left in the
// queue is reported again: a listener whose last full loop found one
// connection accepts one per report, and loops to EAGAIN again on every
// acceptProbe-th report, or for good once a loop finds two or more queued
// (a burst, where the EAGAIN is paid once for many).
func (t *Thread) accept(lc *Conn) {
	l := lc.listener
	info := &t.ctx.info
	limit := acceptBatch
	if l.trickle {
		if l.singles++; l.singles < acceptProbe {
			limit = 1
		} else {
			l.singles = 0
		}
	}
	taken := 0 // connections taken from the queue, kept or not
	for range limit {
		if l.closing.Load() {
			// Listener.Close of its group, on another thread, came
			// first: no connection after it.
			t.closeConn(lc, nil)
			return
		}
		// Room is reserved before accept(2), so a full context leaves
		// connections in the kernel's backlog instead of dropping them.
		var target *Thread
		if l.reuse { // the kernel already chose this thread
			if t.reserve() {
				target = t
			}
		} else {
			target = t.ctx.placement(t)
		}
		if target == nil {
			t.stopAccepting()
			return
		}
		fd, err := sys.Accept(lc.fd)
		t.ctr.Accepts.Add(1)
		if err != nil {
			target.giveBack(false)
			switch {
			case wouldBlock(err):
				l.trickle = taken <= 1
			case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE),
				errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
				t.ctx.log.Warn("plugloop: accept paused", "addr", l.addr, "err", err)
				t.pauseListener(l)
			case errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.EPROTO), errors.Is(err, unix.EPERM):
				taken++
				continue
			case errors.Is(err, unix.EINVAL):
				// No longer listening (shut down behind the core's
				// back): it would be reported ready, a hang-up whatever
				// the interest, and fail at every pass from now on.
				t.ctx.log.Error("plugloop: accept failed, listener closed", "addr", l.addr, "err", err)
				t.closeConn(lc, nil)
			default:
				// Unexpected: rest as for EMFILE rather than fail at
				// every pass while it lasts.
				t.ctx.log.Error("plugloop: accept failed, accept paused", "addr", l.addr, "err", err)
				t.pauseListener(l)
			}
			return
		}
		taken++
		o := &adoptOptions{accepted: true}
		if info.MaxConnsPerIP > 0 {
			var ip netip.Addr
			if sa, err := unix.Getpeername(fd); err == nil {
				ip = addrPort(sa).Addr()
			}
			if ip.IsValid() && !t.ctx.perIP.take(ip, info.MaxConnsPerIP) {
				t.ctx.log.Debug("plugloop: connection over the per-IP limit dropped", "peer", ip)
				target.giveBack(false)
				unix.Close(fd)
				t.ctr.Closes.Add(1)
				continue
			}
			o.peerIP = ip
		}
		if l.tcp {
			l.setNoDelay(fd)
			if ka := info.Keepalive; ka.Idle > 0 {
				if err := sys.SetKeepalive(fd, ka.Idle, ka.Interval, ka.Probes); err != nil {
					t.ctx.log.Warn("plugloop: keepalive", "err", err)
				}
			}
		}
		if target == t {
			t.adoptAccepted(fd, lc.proto, o)
		} else {
			t.handOver(target, fd, lc.proto, o)
		}
		if lc.state != stateOpen || t.dying() {
			return
		}
	}
}

// adoptAccepted adopts an accepted fd on t, which holds room for it,
// closing it if that fails.
func (t *Thread) adoptAccepted(fd int, p *Protocol, o *adoptOptions) {
	if _, err := t.adopt(fd, evlib.KindStream, p, nil, o, true); err != nil && !errors.Is(err, errAdoptRefused) {
		t.logAdoptFailure(fd, err)
		if o.peerIP.IsValid() {
			t.ctx.perIP.add(o.peerIP, -1)
		}
		unix.Close(fd)
		t.ctr.Closes.Add(1)
	}
}

// logAdoptFailure says that t closed a connection because adopting it
// failed (the backend refused its fd, say) where nobody is left to return
// the error to: one it accepted, or one an Adopt call handed over to it and
// returned already. It logs the 1st, 2nd, 4th, 8th... failure, so that a
// cause that fails every accept does not flood the log. A failure because
// the context is being destroyed is no news.
func (t *Thread) logAdoptFailure(fd int, err error) {
	if errors.Is(err, ErrDestroyed) {
		return
	}
	t.adoptFailures++
	if n := t.adoptFailures; n&(n-1) == 0 {
		t.ctx.log.Warn("plugloop: a connection could not be adopted; closed", "thread", t.index, "fd", fd, "err", err, "failures", n)
	}
}

// handOver gives an accepted fd to another service thread, which holds
// room for it and adopts it on its own goroutine (takeOver): the
// connection is never touched by two threads.
func (t *Thread) handOver(target *Thread, fd int, p *Protocol, o *adoptOptions) {
	c := &Conn{t: target, fd: fd, kind: evlib.KindStream, proto: p, state: stateHandover, pending: o}
	if err := target.handoff(c); err != nil {
		target.giveBack(false)
		if o.peerIP.IsValid() {
			t.ctx.perIP.add(o.peerIP, -1)
		}
		unix.Close(fd)
		t.ctr.Closes.Add(1)
	}
}

// beginClose starts a close that waits for pending output and, when
// graceful, for the peer's end of stream; CloseTimeout bounds both.
func (t *Thread) beginClose(c *Conn) {
	c.draining, c.wantWritable = true, false
	if c.relayOut != nil || c.relayIn != nil {
		t.endRelays(c)
	}
	c.peerDone = c.peerDone || c.hup // its end of stream was read already
	c.rxPaused, c.rxbuf = false, nil
	if c.timeout != nil { // set for the open connection, not for its close
		t.timers.remove(c.timeout)
	}
	c.setBound(ErrTimeout)
	if len(c.out) == 0 {
		t.drained(c)
		return
	}
	if c.interest&evlib.Writable == 0 {
		t.setInterest(c, c.interest|evlib.Writable)
	}
}

// drained runs once a closing connection's output is all sent.
func (t *Thread) drained(c *Conn) {
	if !t.ctx.info.GracefulClose || c.kind != evlib.KindStream || c.peerDone {
		t.requestClose(c, nil)
		return
	}
	if !c.shutWR {
		if err := t.shutdown(c); errors.Is(err, unix.ENOTSOCK) {
			// A pipe or tty served as a stream: no FIN to send or to
			// wait for, and its output has left: a Close with nothing
			// left to do (no longer draining).
			c.draining = false
			t.requestClose(c, nil)
			return
		}
		// Another failure shows in the wait for the peer's FIN.
	}
	t.setInterest(c, evlib.Readable) // wait for the peer's FIN
}

// discardInput reads and drops what a closing connection receives, until
// the peer's end of stream closes it, or, while output is pending, stops
// reading: the peer's FIN only says it sends no more, not that it stopped
// reading what it was sent.
func (t *Thread) discardInput(c *Conn) {
	var buf [4 << 10]byte
	for range 16 {
		n, err := t.read(c.fd, buf[:])
		switch {
		case n > 0:
			continue
		case err == nil:
			t.drainEnd(c, t.endOfStream(c))
		case wouldBlock(err):
		default:
			t.drainEnd(c, &OpError{Op: "read", Err: err})
		}
		return
	}
}

// endOfStream is why c's input ended when a read of it said end of
// stream: io.EOF, unless a splice into c stopped short (Conn.cutShort) and
// the socket says it was reset. The splice may have taken the reset's
// error (see sys.SplicedReset), which nothing would tell otherwise. That is
// one system call at the end of such a connection, none for any other.
func (t *Thread) endOfStream(c *Conn) error {
	if c.cutShort && !c.shutWR && sys.SplicedReset(c.fd) {
		return &OpError{Op: "read", Err: unix.ECONNRESET}
	}
	return io.EOF
}

// drainEnd is the peer's end (why: io.EOF, or the read's error) of a
// connection draining after Close: it closes, once its output has left
// after an orderly end.
func (t *Thread) drainEnd(c *Conn, why error) {
	switch {
	case !errors.Is(why, io.EOF):
		t.requestClose(c, why)
	case len(c.out) > 0:
		c.peerDone = true
		t.setInterest(c, c.interest&^evlib.Readable) // end of stream stays readable
	default:
		t.requestClose(c, nil)
	}
}

// stopAccepting takes read interest off every listener of the thread at the
// fd limit: new connections wait in the kernel's backlog instead of being
// accepted and dropped.
func (t *Thread) stopAccepting() {
	t.acceptFull = true
	t.ctx.acceptBlocked.Store(true)
	if !t.toldFull {
		// Once: a thread at its limit stops and resumes with every close.
		t.toldFull = true
		t.ctx.log.Warn("plugloop: accept stopped at the thread's fd limit; it resumes as connections close (said once per thread)", "thread", t.index, "limit", t.limit)
	}
	for _, l := range t.listeners {
		t.setInterest(l.c, 0)
	}
	// Room given back on another thread after placement found none, but
	// before acceptBlocked was set, resumed nothing: look again.
	for _, u := range t.ctx.threads {
		if int(u.load.Load()) < u.limit && u.mode.Load() != modeDead {
			t.unblockAccept(true)
			return
		}
	}
}

func (t *Thread) resumeAccepting() {
	t.acceptFull = false
	for _, l := range t.listeners {
		if l.resume == nil || l.resume.idx < 0 { // not resting after EMFILE
			t.setInterest(l.c, evlib.Readable)
		}
	}
}

func (t *Thread) pauseListener(l *Listener) {
	lc := l.c
	t.setInterest(lc, 0)
	if l.resume == nil {
		l.resume = &Timer{t: t, idx: -1, fn: func() {
			if lc.state == stateOpen && !t.acceptFull {
				t.setInterest(lc, evlib.Readable)
			}
		}}
	}
	t.timers.schedule(l.resume, t.clock()+int64(acceptPause))
}

// teardown closes everything on the thread and releases its backend. The
// caller owns the thread; afterwards it is dead.
func (t *Thread) teardown() {
	if t.destroyed {
		return
	}
	t.destroyed = true
	t.mode.Store(modeBusy)
	t.postMu.Lock()
	t.postClosed, t.posted = true, nil
	hs := t.handoffs
	t.handoffs = nil
	t.postMu.Unlock()
	t.endCallback()
	for _, c := range hs {
		t.dropHandoff(c, ErrDestroyed)
	}
	for len(t.dialing) > 0 {
		t.dialFailed(t.dialing[0], ErrDestroyed)
	}
	for _, c := range t.conns {
		if c != nil {
			t.closeConn(c, ErrDestroyed)
		}
	}
	t.dropPipes()
	if t.wfd.R >= 0 {
		t.unwatch(t.wfd.R, nil, evlib.Readable)
	}
	t.finishStep()
	t.wakeMu.Lock()
	t.wakeClosed = true
	if t.wfd.R >= 0 {
		t.wfd.Close()
	}
	t.wakeMu.Unlock()
	t.timers = timerHeap{}
	// The backend goes before the thread counts as down: the last thread
	// down delivers PROTOCOL_DESTROY and closes Done, and by then nothing
	// of plugloop's may be left in a loop the application owns.
	if err := t.be.Close(); err != nil {
		t.ctx.log.Warn("plugloop: backend close failed", "err", err)
	}
	t.ctx.threadDown(t)
	t.mode.Store(modeDead)
}

// OpError is a system call failure on a connection.
type OpError struct {
	// Op is the system call that failed ("read", "write", ...).
	Op string
	// Err is its error, usually a syscall.Errno.
	Err error
}

// Error says which operation failed and why.
func (e *OpError) Error() string { return "plugloop: " + e.Op + ": " + e.Err.Error() }

// Unwrap returns the underlying error (often a syscall.Errno).
func (e *OpError) Unwrap() error { return e.Err }
