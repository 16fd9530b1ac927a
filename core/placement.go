//go:build unix

package core

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// OnThread places the connection on service thread i (lws' tsi) instead of
// the least-loaded one. An index out of range makes the call fail with an
// error wrapping ErrInvalid before anything was touched: the caller keeps
// its fd or net.Conn.
//
// Placement. AdoptFD, AdoptConn, AdoptFile, AdoptPacketConn, ListenUDP and
// Connect put the new connection on the least-loaded service thread that
// has room below its fd limit (lws_get_idlest_tsi), the lowest index on a
// tie, or on the thread OnThread names. Load counts the fds a thread
// watches plus the connections on their way to it (handed over, or still
// resolving a name), so a batch of calls spreads out. When no thread (or
// not the named one) has room, the call returns ErrFDLimit. A connection
// stays on its thread for life: every callback for it runs there
// (Conn.Thread, Event.Thread).
//
// Who adopts it. The calling goroutine adopts the connection itself when
// it may run the chosen thread's code: it is inside one of that thread's
// callbacks (or Post, AfterFunc and Attach functions), or nobody services
// that thread and the caller is in no callback of the context (before
// Run, or while the application's loop of a foreign-mode thread waits).
// Then RAW_ADOPT has run when the call returns, and a refusal by RAW_ADOPT
// or by the backend is returned as an error. From a callback of another
// thread the fd is handed over instead, as accepted connections are: the
// call returns the Conn at once and the chosen thread adopts it on its own
// goroutine in its next pass. RAW_ADOPT may then run before the call has
// returned, so tie data to the connection with WithUser. A handed-over
// connection the thread cannot watch is closed and logged, with no
// callback; one still on its way when the context is destroyed is closed
// too (a Connect gets CLIENT_CONNECTION_ERROR). From a goroutine in no
// callback while another goroutine services the chosen thread (Run, an
// application's loop), the call fails with ErrWrongGoroutine and the
// caller keeps its fd.
//
// Where the core cannot tell goroutines apart (see ErrWrongGoroutine: on
// architectures other than amd64 and arm64, without the race detector) it
// takes a call made while exactly one thread is busy for a call from that
// thread, and hands over whenever several are: a handover is never wrong,
// only later; and, as for every loop-only call, it does not catch an
// unrelated goroutine calling while the chosen thread is busy.
//
// A handed-over Conn belongs to its thread from the moment it is handed
// over: read its state (Closed, Connecting, FD...) and call its methods on
// that thread only, from its callbacks or a function posted to
// Conn.Thread(). Until RAW_ADOPT Close drops it, output (Write,
// CallbackOnWritable, CloseWrite, RelayTo) returns ErrInvalid, as on a
// client that is still connecting, and its other methods ErrClosed.
func OnThread(i int) AdoptOption {
	return func(o *adoptOptions) { o.thread, o.pinned = i, true }
}

// adoptArgs resolves an adopting call's protocol name and applies its
// options, checking both against the context.
func (c *Context) adoptArgs(kind evlib.Kind, protocol string, opts []AdoptOption) (*Protocol, *adoptOptions, error) {
	p, err := c.protocol(protocol)
	if err != nil {
		return nil, nil, err
	}
	o := new(adoptOptions)
	for _, opt := range opts {
		opt(o)
	}
	// WithReadbuf promises a copy, and a handover or a connect uses the
	// bytes after the call has returned.
	o.readbuf = bytes.Clone(o.readbuf)
	if len(o.readbuf) > 0 && kind != evlib.KindStream {
		// A file's RAW_RX_FILE carries no data (its callback reads), and a
		// datagram's RAW_RX carries its sender: neither has a place for
		// bytes read before adoption.
		return nil, nil, fmt.Errorf("%w: WithReadbuf is for stream sockets (AdoptFD, AdoptConn, Connect)", ErrInvalid)
	}
	if o.pinned && (o.thread < 0 || o.thread >= len(c.threads)) {
		return nil, nil, fmt.Errorf("%w: OnThread(%d): the context has %d service threads", ErrInvalid, o.thread, len(c.threads))
	}
	return p, o, nil
}

// reserve counts one more fd on t if it has room below its limit. The
// reservation becomes the fd's place in insert, or is given back with
// giveBack.
func (t *Thread) reserve() bool {
	for {
		l := t.load.Load()
		if int(l) >= t.limit {
			return false
		}
		if t.load.CompareAndSwap(l, l+1) {
			return true
		}
	}
}

// giveBack returns room on t: a reservation not used, or the place of an
// fd that is gone. If listeners stopped accepting for want of room, every
// thread's resume: directly on t when the caller owns it (own), else
// through Post.
func (t *Thread) giveBack(own bool) {
	t.load.Add(-1)
	t.unblockAccept(own)
}

// unblockAccept resumes every thread's listeners if they stopped for want
// of room (see giveBack).
func (t *Thread) unblockAccept(own bool) {
	if !t.ctx.acceptBlocked.Load() || !t.ctx.acceptBlocked.CompareAndSwap(true, false) {
		return
	}
	for _, u := range t.ctx.threads {
		if u == t && own {
			t.resumeAccepting()
		} else {
			u.Post(u.resumeAccepting)
		}
	}
}

// placement reserves room on the least-loaded thread that has any
// (lws_get_idlest_tsi), preferring prefer on a tie and otherwise the
// lowest index; nil when every thread is at its limit. Reserving at once
// is what lets two threads placing at the same moment never overfill a
// third.
func (c *Context) placement(prefer *Thread) *Thread {
	for {
		best := prefer
		if best != nil && int(best.load.Load()) >= best.limit {
			best = nil
		}
		for _, t := range c.threads {
			l := t.load.Load()
			if int(l) < t.limit && t.mode.Load() != modeDead && (best == nil || l < best.load.Load()) {
				best = t
			}
		}
		if best == nil || best.reserve() {
			return best
		}
	}
}

// pick reserves room on the thread an adoption goes to.
func (c *Context) pick(o *adoptOptions) (*Thread, error) {
	if o.pinned {
		t := c.threads[o.thread]
		if t.mode.Load() == modeDead {
			return nil, ErrDestroyed
		}
		if !t.reserve() {
			return nil, fmt.Errorf("%w: service thread %d", ErrFDLimit, o.thread)
		}
		return t, nil
	}
	if t := c.placement(nil); t != nil {
		return t, nil
	}
	return nil, ErrFDLimit
}

// callerThread returns the thread whose code the calling goroutine is
// running (a callback, or a loop-only call holding it). With exactOwner it
// knows. Without, it cannot tell goroutines apart: it takes the one busy
// thread, as own does, and answers unsure when several are busy, since the
// caller may be in any of them.
func (c *Context) callerThread() (home *Thread, unsure bool) {
	if exactOwner {
		me := goroutineID()
		for _, t := range c.threads {
			if t.mode.Load() == modeBusy && t.owner.Load() == me {
				return t, false
			}
		}
		return nil, false
	}
	for _, t := range c.threads {
		if t.mode.Load() == modeBusy {
			if home != nil {
				return nil, true
			}
			home = t
		}
	}
	return home, false
}

// threadMethods is the name prefix of Thread's methods, as stack frames
// spell it.
var threadMethods = strings.TrimSuffix(runtime.FuncForPC(reflect.ValueOf((*Thread).Index).Pointer()).Name(), "Index")

// inThreadCode reports whether the calling goroutine runs a service
// thread's code: a callback, or a Post, AfterFunc or Attach function, all
// of which run beneath a Thread method (a pass, Service, ServiceFD, or a
// backend's Ready). It walks the stack (a few microseconds), which the
// methods any goroutine may call can afford where the core cannot tell
// goroutines apart otherwise (no exactOwner).
func inThreadCode() bool {
	var pcs [64]uintptr
	for skip := 2; ; skip += len(pcs) { // however deep the callback's own calls go
		n := runtime.Callers(skip, pcs[:])
		frames := runtime.CallersFrames(pcs[:n])
		for {
			f, more := frames.Next()
			if strings.HasPrefix(f.Function, threadMethods) {
				return true
			}
			if !more {
				break
			}
		}
		if n < len(pcs) {
			return false
		}
	}
}

// callerThreadExact is callerThread for the methods any goroutine may
// call: a goroutine outside every thread's code is never taken for the
// busy thread's own.
func (c *Context) callerThreadExact() (home *Thread, unsure bool) {
	home, unsure = c.callerThread()
	if !exactOwner && (home != nil || unsure) && !inThreadCode() {
		return nil, false
	}
	return home, unsure
}

// route decides how an adoption made on the calling goroutine reaches t:
// in place (took: the caller took the idle thread and must release it),
// handed over, or refused. It never runs t's code on a goroutine that may
// be servicing another thread: that is what handover is for.
func (c *Context) route(t *Thread) (took, handover bool, err error) {
	home, unsure := c.callerThread()
	return c.routeFrom(home, unsure, t)
}

// routeFrom is route for a caller whose thread is known.
func (c *Context) routeFrom(home *Thread, unsure bool, t *Thread) (took, handover bool, err error) {
	switch {
	case home == t:
		return false, false, nil
	case home != nil || unsure:
		return false, true, nil
	}
	// In no callback: only an idle thread may be taken. Unlike own, never
	// join a busy one, which here can only be another goroutine's.
	if t.mode.CompareAndSwap(modeIdle, modeBusy) {
		t.setOwner()
		return true, false, nil
	}
	if t.mode.Load() == modeDead {
		return false, false, ErrDestroyed
	}
	return false, false, ErrWrongGoroutine
}

// adoptKind adopts fd, which the caller owns until the call succeeds, as a
// connection of kind on the thread o names or placement picks. On error
// the caller still owns fd, unless the error wraps errAdoptRefused.
func (c *Context) adoptKind(fd int, kind evlib.Kind, p *Protocol, o *adoptOptions) (*Conn, error) {
	if c.destroyReq.Load() {
		return nil, ErrDestroyed
	}
	if !c.fds.claim(fd) {
		return nil, fmt.Errorf("%w: fd %d is already adopted", ErrBadFD, fd)
	}
	t, err := c.pick(o)
	if err != nil {
		c.fds.drop(fd)
		return nil, err
	}
	fail := func(err error) (*Conn, error) {
		t.giveBack(false)
		c.fds.drop(fd)
		return nil, err
	}
	took, handover, err := c.route(t)
	if err != nil {
		return fail(err)
	}
	if err := sys.SetNonblock(fd); err != nil {
		t.release(took)
		return fail(fmt.Errorf("%w: fd %d: %v", ErrBadFD, fd, err))
	}
	conn := &Conn{t: t, fd: fd, kind: kind, proto: p, user: o.user, state: stateHandover}
	if handover {
		conn.pending = o
		if err := t.handoff(conn); err != nil {
			return fail(err)
		}
		return conn, nil
	}
	defer t.release(took)
	if err := t.adoptConn(conn, o, true); err != nil {
		if !errors.Is(err, errAdoptRefused) {
			c.fds.drop(fd) // the reservation went back with the failed insert
		}
		return nil, err
	}
	return conn, nil
}

// adoptConn makes c (fd, kind and protocol set) watched and, unless it is
// a listener, live with RAW_ADOPT. reserved: the caller holds room on t
// for it.
func (t *Thread) adoptConn(c *Conn, o *adoptOptions, reserved bool) error {
	// Open from its ADD_POLL_FD on: a Close there is queued like any
	// other and runs after RAW_ADOPT, where as a handover's it would
	// close the fd under the insert.
	c.state = stateOpen
	c.accepted = o.accepted
	if err := t.insert(c, evlib.Readable, reserved); err != nil {
		return err
	}
	if c.listener != nil {
		return nil
	}
	_, err := t.established(c, o)
	return err
}

// handoff queues c, created on another goroutine with room reserved on t,
// for t to adopt on its own goroutine in its next pass (takeOver). From
// then on c belongs to t. It fails only when t is being torn down, and
// then the caller keeps the fd and the reservation.
func (t *Thread) handoff(c *Conn) error {
	t.postMu.Lock()
	if t.postClosed {
		t.postMu.Unlock()
		return ErrDestroyed
	}
	t.handoffs = append(t.handoffs, c)
	t.postMu.Unlock()
	// Queued before teardown closed the queue, so teardown drops it if
	// the wakeup is too late to matter.
	_ = t.wake()
	return nil
}

// takeOver adopts a connection handed over by another goroutine, unless
// it was dropped meanwhile.
func (t *Thread) takeOver(c *Conn) {
	if t.dying() {
		t.dropHandoff(c, ErrDestroyed)
		return
	}
	if c.dial != nil {
		if c.state == stateConnecting {
			t.startDial(c)
		}
		return
	}
	if c.state != stateHandover {
		return
	}
	o := c.pending
	c.pending = nil
	err := t.adoptConn(c, o, true)
	if err == nil || errors.Is(err, errAdoptRefused) {
		return
	}
	t.logAdoptFailure(c.fd, err)
	c.state = stateClosed
	t.closeHandedFD(c.fd, o)
	c.fdClosed.Store(true)
}

// dropHandoff ends a handed-over connection before it was adopted: Close,
// or destroy. A client connection gets CLIENT_CONNECTION_ERROR; an
// adoption, having had no RAW_ADOPT, gets no callback.
func (t *Thread) dropHandoff(c *Conn, why error) {
	if c.dial != nil {
		t.dialFailed(c, why)
		return
	}
	if c.state != stateHandover {
		return
	}
	o := c.pending
	c.state, c.pending = stateClosed, nil
	t.giveBack(true)
	t.closeHandedFD(c.fd, o)
	c.fdClosed.Store(true)
}

// closeHandedFD closes the fd of a handed-over connection that never made
// it into the fd table, undoing what was counted for it.
func (t *Thread) closeHandedFD(fd int, o *adoptOptions) {
	if o != nil && o.peerIP.IsValid() {
		t.ctx.perIP.add(o.peerIP, -1)
	}
	t.ctx.fds.drop(fd)
	unix.Close(fd)
	t.ctr.Closes.Add(1)
}

// fdSet is the set of descriptors a context owns — in a thread's fd table,
// on the way to a thread, or a thread's wake fd — so that one fd cannot be
// adopted twice, by two threads whose tables know nothing of each other.
type fdSet struct {
	mu   sync.Mutex
	bits []uint64
}

// claim adds fd and reports whether it was absent.
func (s *fdSet) claim(fd int) bool {
	if !sys.ValidFD(fd) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w, b := fd/64, uint64(1)<<(fd%64)
	if w >= len(s.bits) {
		s.bits = append(s.bits, make([]uint64, w+1-len(s.bits))...)
	}
	if s.bits[w]&b != 0 {
		return false
	}
	s.bits[w] |= b
	return true
}

// add records fd, whether or not it was recorded already.
func (s *fdSet) add(fd int) { s.claim(fd) }

// drop forgets fds. A closing fd is forgotten before close(2), so that the
// number is free in the set by the time the kernel can hand it out again.
func (s *fdSet) drop(fds ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fd := range fds {
		if w := fd / 64; fd >= 0 && w < len(s.bits) {
			s.bits[w] &^= uint64(1) << (fd % 64)
		}
	}
}
