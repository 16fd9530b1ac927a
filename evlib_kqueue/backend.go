package evlib_kqueue

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
)

// kernel is what the backend needs from the operating system: one kqueue.
// kqueue_bsd.go implements it over golang.org/x/sys/unix; the tests
// implement it with a model of the kernel's rules.
type kernel interface {
	// kevent is kevent(2): it submits changes, then collects at most
	// len(events) events, waiting at most wait (wait < 0: no limit; 0: do
	// not block). As in kevent(2), a change that fails comes back in events
	// with flagError and the errno in data, and then the kernel returns at
	// once, without waiting or collecting any event.
	kevent(changes, events []kevent, wait time.Duration) (int, error)
	// apply submits changes and never collects events (a foreign kqueue's
	// events are the application's). errs[i] receives the failure of
	// changes[i], or nil. It returns how many system calls it made.
	apply(changes []kevent, errs []error) (calls int, err error)
	// trigger fires the EVFILT_USER wakeup. Any goroutine may call it.
	trigger() error
	// checkFD reports an error if fd is not an open descriptor.
	checkFD(fd int) error
	// close closes the kqueue.
	close() error
}

const (
	// initialEvents is the first size of the event list; it doubles while
	// waits fill it, up to maxBatch.
	initialEvents = 128
	maxBatch      = 1024
	// maxWait caps a wait; a longer one just returns early, which Poll may.
	maxWait = time.Duration(1<<31-1) * time.Millisecond
)

// Backend is a kqueue serving one service thread.
//
// Interest changes are kept in bookkeeping (see interest) and go to the
// kernel as the changelist of the next kevent call, together with the wait.
// Two rules of kevent(2), the same on every BSD, shape that:
//
//   - A change that fails is reported in the event list (EV_ERROR, errno in
//     data) if the list has room for it; if it has not, kevent fails with
//     that errno and drops the changes after it. So the event list is always
//     at least as long as the changelist, which gives every change room to
//     fail.
//   - Once a change has failed (or was submitted with EV_RECEIPT), kevent
//     returns the failures at once: it neither waits nor collects events.
//     So EV_RECEIPT, which turns every change into such a result, would
//     cost a second kevent call per batch of changes, and it is not used
//     here; and a kevent call that returns only failures it is right to
//     ignore is followed by another that waits.
//
// The failures that can be expected are kept rare: Remove sends no
// EV_DELETE (see interest), so closed fds do not make deletes fail.
type Backend struct {
	k       kernel
	foreign bool // the kqueue belongs to the application
	sink    evlib.Sink
	ctr     *evlib.Counters
	log     *slog.Logger
	in      interest
	changes []kevent
	events  []kevent
	ready   []ready
	slot    []int32 // fd → 1 + its index in ready, while collecting
	errs    []error // foreign mode: the failure of each change
	pre     sys.Prepoll
	closed  bool

	wakeMu     sync.RWMutex // fences Wake against Close
	wakeClosed bool
}

type ready struct {
	fd int
	ev evlib.Events
}

// waking is a Backend with a wakeup of its own, an EVFILT_USER event: New
// returns one for a kqueue of its own where the system has EVFILT_USER.
// It is a type of its own so that a Backend on a foreign kqueue, or on a
// system without EVFILT_USER, does not implement evlib.Waker, and the core
// watches its wakeup pipe instead.
type waking struct{ *Backend }

// Wake implements evlib.Waker: it triggers the user event, which makes a
// Poll in progress, or the next one, return. Any goroutine may call it;
// after Close it does nothing.
func (w waking) Wake() error {
	b := w.Backend
	b.wakeMu.RLock()
	defer b.wakeMu.RUnlock()
	if b.wakeClosed {
		return nil
	}
	b.ctr.Wakes.Add(1)
	if err := b.k.trigger(); err != nil {
		return fmt.Errorf("kevent NOTE_TRIGGER: %w", err)
	}
	return nil
}

// newBackend creates the backend on a kqueue of its own (open) or, with
// cfg.Foreign set to a kqueue fd, on the application's (attach). wakeable
// tells whether open's kqueue has the EVFILT_USER wakeup.
func newBackend(cfg evlib.Config, open func() (kernel, error), attach func(kq int) (kernel, error), wakeable bool) (evlib.Backend, error) {
	b := &Backend{sink: cfg.Sink, ctr: cfg.Counters, log: cfg.Logger, events: make([]kevent, initialEvents)}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	switch f := cfg.Foreign.(type) {
	case nil:
		k, err := open()
		if err != nil {
			return nil, err
		}
		b.k = k
		if wakeable {
			return waking{b}, nil
		}
		return b, nil
	case int:
		if f < 0 {
			return nil, fmt.Errorf("%w: kqueue fd %d", evlib.ErrBadFD, f)
		}
		k, err := attach(f)
		if err != nil {
			return nil, err
		}
		b.k, b.foreign = k, true
		return b, nil
	default:
		return nil, fmt.Errorf("%w: want a kqueue fd (int), got %T", evlib.ErrForeignUnsupported, cfg.Foreign)
	}
}

// Add implements evlib.Backend. It checks that fd is open (fcntl F_GETFD),
// so that a bad fd fails here and not in a later Poll; the knotes follow
// with the next kevent call. On a foreign kqueue they are added at once.
func (b *Backend) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if !sys.ValidFD(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
	}
	if b.in.isWatched(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrExist, fd)
	}
	if !b.foreign {
		b.ctr.InterestChanges.Add(1)
		if err := b.k.checkFD(fd); err != nil {
			return fmt.Errorf("%w: fd %d: %v", evlib.ErrBadFD, fd, err)
		}
		b.in.add(fd, ev)
		return nil
	}
	if fd >= len(b.in.state) || ev&(evlib.Readable|evlib.Writable) == 0 {
		// The kernel first where the table would grow, so that it grows
		// only for an open fd, not to any number passed in; and where no
		// EV_ADD follows, which would fail for a closed fd.
		if err := b.k.checkFD(fd); err != nil {
			return fmt.Errorf("%w: fd %d: %v", evlib.ErrBadFD, fd, err)
		}
	}
	b.in.add(fd, ev)
	err := b.applyNow()
	if err == nil {
		return nil
	}
	// Undo what went through: the fd is not watched.
	b.in.remove(fd, false)
	if b.applyNow() != nil {
		b.in.remove(fd, true) // forget, as if closed
		b.in.commit()
	}
	if errors.Is(err, syscall.EBADF) {
		return fmt.Errorf("%w: fd %d: %w", evlib.ErrBadFD, fd, err)
	}
	return fmt.Errorf("fd %d: %w", fd, err)
}

// Modify implements evlib.Backend. The change goes out with the next kevent
// call (at once on a foreign kqueue).
func (b *Backend) Modify(fd int, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if !b.in.isWatched(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrNotWatched, fd)
	}
	b.in.modify(fd, ev)
	if b.foreign {
		if err := b.applyNow(); err != nil {
			return fmt.Errorf("fd %d: %w", fd, err)
		}
	}
	return nil
}

// Remove implements evlib.Backend. It makes no system call: the core closes
// fd next, which removes its knotes (see interest). On a foreign kqueue,
// whose events the backend never sees, it deletes them at once.
func (b *Backend) Remove(fd int) error {
	if b.closed || !b.in.isWatched(fd) {
		return nil
	}
	b.in.remove(fd, !b.foreign)
	if b.foreign {
		if err := b.applyNow(); err != nil {
			return fmt.Errorf("fd %d: %w", fd, err)
		}
	}
	return nil
}

// applyNow submits the queued changes at once (foreign mode) and returns
// the first failure of an EV_ADD; failed deletes are ignored, like in Poll.
// If the submission fails as a whole, the changes stay queued.
func (b *Backend) applyNow() error {
	b.changes = b.in.changes(b.changes[:0])
	if len(b.changes) == 0 {
		b.in.commit()
		return nil
	}
	if cap(b.errs) < len(b.changes) {
		b.errs = make([]error, len(b.changes))
	}
	errs := b.errs[:len(b.changes)]
	clear(errs)
	calls, err := b.k.apply(b.changes, errs)
	b.ctr.InterestChanges.Add(uint64(calls))
	if err != nil {
		return fmt.Errorf("kevent: %w", err)
	}
	b.in.commit()
	var first error
	for i := range b.changes {
		c := &b.changes[i]
		if errs[i] != nil && b.in.failed(c.ident, c.filter) && first == nil {
			first = fmt.Errorf("kevent EV_ADD %s: %w", c.filter, errs[i])
		}
	}
	return first
}

// Poll implements evlib.Backend. The queued interest changes go to the
// kernel with the wait. After a batch that reported events it first polls
// without blocking, as the epoll backend does. The timeout is passed as a
// timespec, which has nanoseconds: no rounding is needed, so a timer due in
// 300 µs neither spins on zero-length waits nor waits a whole millisecond.
func (b *Backend) Poll(timeout time.Duration) (int, error) {
	if b.closed {
		return 0, evlib.ErrClosed
	}
	if b.foreign {
		return 0, fmt.Errorf("%w: the kqueue belongs to the application", evlib.ErrAppDriven)
	}
	wait := timeout
	looking := b.pre.Look(timeout != 0)
	if looking {
		wait = 0
	}
	// At most: a non-blocking look whose changes fail, the look again, the
	// blocking wait. The bound is a guard; each retry sends fewer changes.
	for range 4 {
		if wait != 0 {
			sys.BeforeBlock()
		}
		n, err := b.wait(wait)
		if err != nil {
			b.pre.Waited(0)
			if errors.Is(err, syscall.EINTR) {
				return 0, nil
			}
			return 0, fmt.Errorf("kevent: %w", err)
		}
		woken, failures := b.collect(b.events[:n])
		if n == len(b.events) && n < maxBatch && !failures {
			b.events = make([]kevent, 2*n)
		}
		if len(b.ready) == 0 && !woken {
			if failures {
				continue // the kernel returned the failures without waiting
			}
			if looking {
				b.pre.Looked(0) // the non-blocking look found nothing: block
				looking, wait = false, timeout
				continue
			}
		}
		n = b.dispatch()
		if looking {
			b.pre.Looked(n)
		} else {
			b.pre.Waited(n)
		}
		return n, nil
	}
	b.pre.Waited(0)
	return 0, nil
}

// wait makes one kevent call with the queued changes.
func (b *Backend) wait(wait time.Duration) (int, error) {
	b.changes = b.in.changes(b.changes[:0])
	if len(b.events) < len(b.changes) {
		b.events = make([]kevent, len(b.changes)) // room for every change to fail
	}
	if wait > maxWait {
		wait = maxWait
	}
	b.ctr.Waits.Add(1)
	n, err := b.k.kevent(b.changes, b.events, wait)
	// The kernel applies the changes before it waits, so an interrupted
	// wait has applied them too. After any other failure it is not known
	// how far it got, and the changes go again with the next call (adding
	// a knote twice is harmless, deleting one twice fails with ENOENT,
	// which is ignored).
	if err == nil || errors.Is(err, syscall.EINTR) {
		b.in.commit()
	}
	return n, err
}

// collect turns the results of a kevent call into b.ready, one entry per
// fd, before any is reported: reporting runs the core, which changes the
// bookkeeping that tells the results apart. It reports whether the user
// event fired and whether the results were failed changes.
func (b *Backend) collect(evs []kevent) (woken, failures bool) {
	b.ready = b.ready[:0]
	for i := range evs {
		k := &evs[i]
		switch {
		case k.flags&flagError != 0:
			failures = true
			b.failed(k)
		case k.filter == filterUser:
			woken = true
		case k.filter == filterRead || k.filter == filterWrite:
			if !b.in.registered(k.ident, k.filter) {
				// A knote Remove forgot, of an fd that is still open:
				// not the core's business; delete it.
				b.in.leftover(k.ident, k.filter)
				continue
			}
			b.merge(k.ident, translate(k))
		}
	}
	for _, r := range b.ready {
		b.slot[r.fd] = 0
	}
	// In fd order, as the epoll backend reports its batches: at 1,000
	// connections on Linux that order cost about 10% less CPU per round
	// trip than the kernel's.
	if len(b.ready) > 1 {
		slices.SortFunc(b.ready, func(x, y ready) int { return cmp.Compare(x.fd, y.fd) })
	}
	return woken, failures
}

// failed handles a change that failed. A failed EV_DELETE is ignored: the
// knote is gone either way (ENOENT or EBADF when the fd was closed and
// maybe reused, ENOTCAPABLE on FreeBSD for a closed fd under Capsicum). A
// failed EV_ADD leaves a watched fd without the knote it wants, which
// would hang its connection: it is reported to the core as an Error on the
// fd, and logged (EPIPE, for instance, when macOS will not watch a pipe
// whose reader is gone; EBADF when an fd was closed before it was removed).
func (b *Backend) failed(k *kevent) {
	if !b.in.failed(k.ident, k.filter) {
		return
	}
	b.log.Warn("plugloop: kqueue cannot watch fd", "fd", k.ident, "filter", k.filter.String(), "err", k.errno())
	b.merge(k.ident, evlib.Error)
}

// merge adds ev to fd's entry in b.ready: kqueue reports each filter on its
// own, the core wants one report per fd.
func (b *Backend) merge(fd int, ev evlib.Events) {
	if fd >= len(b.slot) {
		s := make([]int32, len(b.in.state))
		copy(s, b.slot)
		b.slot = s
	}
	if i := b.slot[fd]; i > 0 {
		b.ready[i-1].ev |= ev
		return
	}
	b.ready = append(b.ready, ready{fd, ev})
	b.slot[fd] = int32(len(b.ready))
}

// dispatch reports b.ready to the Sink. An fd removed earlier in the batch
// is skipped, and Readable or Writable only while the fd still wants it
// (Hangup and Error always); the core may have changed both while handling
// an earlier fd.
func (b *Backend) dispatch() int {
	n := 0
	for _, r := range b.ready {
		if !b.in.isWatched(r.fd) {
			continue
		}
		ev := r.ev & (b.in.wants(r.fd) | evlib.Hangup | evlib.Error)
		if ev == 0 {
			continue
		}
		b.sink.Ready(r.fd, ev)
		n++
	}
	return n
}

// Close implements evlib.Backend. A foreign kqueue is left open; every fd
// the core added has been removed from it by then.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.wakeMu.Lock()
	b.wakeClosed = true
	b.wakeMu.Unlock()
	if b.foreign {
		return nil
	}
	return b.k.close()
}
