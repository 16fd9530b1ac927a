//go:build unix

package conformance

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/goid"
	"github.com/stretchr/testify/require"
)

// event is one callback as the recorder saw it on entry.
type event struct {
	seq    int
	reason core.Reason
	proto  string
	conn   *core.Conn
	fd     int // the conn's fd, or Poll.FD for the poll-fd reasons
	poll   core.PollArgs
	n      int // Event.Len
	err    error
	data   int // len(Event.Data)
	g      uint64
	thread bool
	ti     int  // Event.Thread's index, -1 without a thread
	file   bool // a RAW_*_FILE reason, recorded as its RAW_* counterpart
}

func (e event) String() string {
	s := fmt.Sprintf("#%d %s proto=%s fd=%d", e.seq, e.reason, e.proto, e.fd)
	if e.file {
		s += " (file)"
	}
	if e.ti > 0 {
		s += fmt.Sprintf(" thread=%d", e.ti)
	}
	switch e.reason {
	case core.ReasonAddPollFD, core.ReasonDelPollFD, core.ReasonChangeModePollFD:
		s += fmt.Sprintf(" events=%v prev=%v", e.poll.Events, e.poll.PrevEvents)
	case core.ReasonLockPoll, core.ReasonUnlockPoll:
		s += fmt.Sprintf(" len=%d", e.n)
	case core.ReasonRawRX:
		s += fmt.Sprintf(" bytes=%d", e.data)
	case core.ReasonRawClose:
		s += fmt.Sprintf(" err=%v", e.err)
	}
	return s
}

func isPollReason(r core.Reason) bool {
	switch r {
	case core.ReasonAddPollFD, core.ReasonDelPollFD, core.ReasonChangeModePollFD,
		core.ReasonLockPoll, core.ReasonUnlockPoll:
		return true
	}
	return false
}

// recorder sees every callback of a context and checks, as they happen,
// the invariants every backend must keep (checklist 6, 33 and the
// lifecycle rules of 28-31):
//
//   - the callbacks of one service thread never run on two goroutines at
//     once (with several threads, each thread's callbacks may run alongside
//     the others');
//   - PROTOCOL_INIT comes once per protocol before any other callback,
//     PROTOCOL_DESTROY once per protocol after every other one;
//   - a connection gets exactly one RAW_ADOPT, first, and at most one
//     RAW_CLOSE, and no callback at all after it;
//   - RAW_RX_END comes at most once per connection, only to a protocol
//     with AllowHalfOpen, never while its rx is paused, and no RAW_RX
//     follows it;
//   - RAW_RX never carries zero bytes (RAW_RX_FILE carries none: the
//     callback reads the file); the RAW_*_FILE reasons of an adopted file
//     are recorded and checked as their RAW_* counterparts;
//   - the poll-fd reasons come as LOCK, ADD|DEL|CHANGE, UNLOCK with Len 1
//     around adds and deletes and 0 around changes, each sequence on one
//     thread; ADD once per fd before
//     any event for it, with Events Readable; CHANGE and DEL report the
//     interest the fd really had; every fd is deleted by the end;
//   - a connection's callbacks come while its fd is added, except RAW_CLOSE
//     (after the DEL) and, for one taken out of the poll set while open
//     (a DEL, then no RAW_CLOSE yet: nothing more can come for it), the
//     RAW_RX of the input it kept and TIMER; ADD puts it back, with any
//     interest.
type recorder struct {
	mu       sync.Mutex
	events   []event
	problems []string
	notify   chan struct{}

	protos  []string
	inits   map[string]int
	destroy map[string]int

	adopted map[*core.Conn]int
	closed  map[*core.Conn]int
	rxEnd   map[*core.Conn]int
	watched map[int]evlib.Events
	owner   map[int]*core.Conn  // conn an fd was added for (nil: core's own fd)
	parked  map[*core.Conn]bool // open, but taken out of the poll set
	lock    map[int]*event      // per thread: LOCK_POLL awaiting its UNLOCK
	lockOp  map[int]bool        // per thread: the op inside the pending lock came

	active  map[int]int    // per thread: callbacks running
	activeG map[int]uint64 // per thread: the goroutine running them
}

func newRecorder(protos []string) *recorder {
	return &recorder{
		notify: make(chan struct{}), protos: protos,
		inits: map[string]int{}, destroy: map[string]int{},
		adopted: map[*core.Conn]int{}, closed: map[*core.Conn]int{}, rxEnd: map[*core.Conn]int{},
		watched: map[int]evlib.Events{}, owner: map[int]*core.Conn{}, parked: map[*core.Conn]bool{},
		lock: map[int]*event{}, lockOp: map[int]bool{},
		active: map[int]int{}, activeG: map[int]uint64{},
	}
}

func (r *recorder) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// enter records a callback on entry and checks it; exit must follow.
func (r *recorder) enter(ev core.Event) {
	g := goid.ID()
	ti := -1
	if ev.Thread != nil {
		ti = ev.Thread.Index()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.active[ti] > 0 && r.activeG[ti] != g {
		r.problem("%s ran on goroutine %d while a callback of the same thread was running on goroutine %d", ev.Reason, g, r.activeG[ti])
	}
	r.active[ti]++
	r.activeG[ti] = g
	reason, file := ev.Reason, false
	switch ev.Reason {
	case core.ReasonRawAdoptFile:
		reason, file = core.ReasonRawAdopt, true
	case core.ReasonRawRXFile:
		reason, file = core.ReasonRawRX, true
	case core.ReasonRawWriteableFile:
		reason, file = core.ReasonRawWriteable, true
	case core.ReasonRawCloseFile:
		reason, file = core.ReasonRawClose, true
	}
	e := event{seq: len(r.events), reason: reason, conn: ev.Conn, fd: -1, poll: ev.Poll,
		n: ev.Len, err: ev.Err, data: len(ev.Data), g: g, thread: ev.Thread != nil, ti: ti, file: file}
	if ev.Protocol != nil {
		e.proto = ev.Protocol.Name
	}
	if ev.Conn != nil {
		e.fd = ev.Conn.FD()
	}
	if isPollReason(ev.Reason) {
		e.fd = ev.Poll.FD
	}
	r.check(e, ev)
	r.events = append(r.events, e)
	close(r.notify)
	r.notify = make(chan struct{})
}

func (r *recorder) exit(ev core.Event) {
	ti := -1
	if ev.Thread != nil {
		ti = ev.Thread.Index()
	}
	r.mu.Lock()
	r.active[ti]--
	r.mu.Unlock()
}

func (r *recorder) check(e event, ev core.Event) {
	for _, p := range r.protos {
		if r.destroy[p] > 0 && e.reason != core.ReasonProtocolDestroy {
			r.problem("%v after PROTOCOL_DESTROY", e)
			break
		}
	}
	switch e.reason {
	case core.ReasonProtocolInit:
		r.inits[e.proto]++
		if r.inits[e.proto] > 1 {
			r.problem("PROTOCOL_INIT delivered %d times to %q", r.inits[e.proto], e.proto)
		}
		if ev.Thread != nil || ev.Conn != nil {
			r.problem("PROTOCOL_INIT with a Thread or Conn")
		}
		return
	case core.ReasonProtocolDestroy:
		r.destroy[e.proto]++
		if r.destroy[e.proto] > 1 {
			r.problem("PROTOCOL_DESTROY delivered %d times to %q", r.destroy[e.proto], e.proto)
		}
		if r.inits[e.proto] != 1 {
			r.problem("PROTOCOL_DESTROY to %q without one PROTOCOL_INIT", e.proto)
		}
		for c, n := range r.adopted {
			if n > 0 && r.closed[c] == 0 {
				r.problem("PROTOCOL_DESTROY while fd %d was never closed", c.FD())
			}
		}
		if len(r.watched) > 0 {
			r.problem("PROTOCOL_DESTROY while fds %v were still watched (no DEL_POLL_FD)", r.watched)
		}
		if ev.Thread != nil || ev.Conn != nil {
			r.problem("PROTOCOL_DESTROY with a Thread or Conn")
		}
		return
	}
	for _, p := range r.protos {
		if r.inits[p] != 1 {
			r.problem("%v before PROTOCOL_INIT of %q", e, p)
			break
		}
	}
	if !e.thread {
		r.problem("%v without Event.Thread", e)
	}
	if e.conn != nil && r.closed[e.conn] > 0 {
		r.problem("%v for a connection after its RAW_CLOSE", e)
	}
	if isPollReason(e.reason) {
		r.checkPoll(e)
		return
	}
	if l := r.lock[e.ti]; l != nil {
		r.problem("%v between LOCK_POLL and UNLOCK_POLL (%v)", e, *l)
	}
	switch e.reason {
	case core.ReasonRawAdopt, core.ReasonRawRX, core.ReasonRawWriteable, core.ReasonRawClose, core.ReasonTimer, core.ReasonRawRxEnd:
		if e.conn == nil {
			r.problem("%v without a Conn", e)
			return
		}
	case core.ReasonEventWaitCancelled:
		if e.conn != nil {
			r.problem("%v with a Conn", e)
		}
		return
	default:
		return
	}
	c := e.conn
	switch e.reason {
	case core.ReasonRawAdopt:
		r.adopted[c]++
		if r.adopted[c] > 1 {
			r.problem("second RAW_ADOPT for fd %d", e.fd)
		}
	case core.ReasonRawClose:
		r.closed[c]++
		if r.adopted[c] != 1 {
			r.problem("%v without a RAW_ADOPT", e)
		}
		if _, ok := r.watched[e.fd]; ok && r.owner[e.fd] == c {
			r.problem("%v while its fd is still watched (no DEL_POLL_FD before it)", e)
		}
		return
	default:
		if r.adopted[c] != 1 {
			r.problem("%v before RAW_ADOPT", e)
		}
	}
	switch {
	case e.reason == core.ReasonRawRxEnd:
		r.rxEnd[c]++
		if r.rxEnd[c] > 1 {
			r.problem("%v: RAW_RX_END number %d", e, r.rxEnd[c])
		}
		if !c.Protocol().AllowHalfOpen {
			r.problem("%v to a protocol without AllowHalfOpen", e)
		}
		if c.RxPaused() {
			r.problem("%v while rx is paused", e)
		}
	case e.reason == core.ReasonRawRX && !e.file && r.rxEnd[c] > 0:
		r.problem("%v after RAW_RX_END", e)
	}
	// A connection taken out of the poll set while open (its stream ended
	// with input kept, or a paused file hung up) still gets that input, its
	// timer and, after an orderly end, RAW_RX_END and the WRITEABLEs it asks
	// for to answer (the core watches it again only while a write is
	// blocked).
	kept := r.parked[c] && (e.reason == core.ReasonRawRX || e.reason == core.ReasonTimer || e.reason == core.ReasonRawWriteable || e.reason == core.ReasonRawRxEnd)
	if _, ok := r.watched[e.fd]; (!ok || r.owner[e.fd] != c) && !kept {
		r.problem("%v while its fd is not watched for it (no ADD_POLL_FD)", e)
	}
	if e.reason == core.ReasonRawRX && e.data == 0 && !e.file {
		r.problem("%v with no data", e)
	}
}

func (r *recorder) checkPoll(e event) {
	switch e.reason {
	case core.ReasonLockPoll:
		if l := r.lock[e.ti]; l != nil {
			r.problem("%v inside another LOCK_POLL (%v)", e, *l)
		}
		if e.n != 0 && e.n != 1 {
			r.problem("%v: Len must be 0 or 1", e)
		}
		l := e
		r.lock[e.ti], r.lockOp[e.ti] = &l, false
		return
	case core.ReasonUnlockPoll:
		switch l := r.lock[e.ti]; {
		case l == nil:
			r.problem("%v without LOCK_POLL", e)
		case l.fd != e.fd || l.n != e.n:
			r.problem("%v does not match %v", e, *l)
		}
		delete(r.lock, e.ti)
		return
	}
	wantLen := 1
	if e.reason == core.ReasonChangeModePollFD {
		wantLen = 0
	}
	switch l := r.lock[e.ti]; {
	case l == nil:
		r.problem("%v outside LOCK_POLL/UNLOCK_POLL", e)
	case r.lockOp[e.ti]:
		r.problem("%v: second change inside one LOCK_POLL", e)
	case l.fd != e.fd || l.n != wantLen:
		r.problem("%v inside %v (want Len %d for the same fd)", e, *l, wantLen)
	}
	r.lockOp[e.ti] = true
	cur, ok := r.watched[e.fd]
	switch e.reason {
	case core.ReasonAddPollFD:
		if ok {
			r.problem("%v for an fd already added", e)
		}
		if e.poll.Events != evlib.Readable && !r.parked[e.conn] {
			r.problem("%v: a new fd must be added with Readable interest", e)
		}
		r.watched[e.fd] = e.poll.Events
		r.owner[e.fd] = e.conn
		delete(r.parked, e.conn)
	case core.ReasonDelPollFD:
		if !ok {
			r.problem("%v for an fd never added", e)
		} else if e.poll.PrevEvents != cur {
			r.problem("%v: the fd's interest was %v", e, cur)
		}
		delete(r.watched, e.fd)
		delete(r.owner, e.fd)
		if e.conn != nil && r.closed[e.conn] == 0 {
			r.parked[e.conn] = true // RAW_CLOSE follows, or input kept, or a re-ADD
		}
	case core.ReasonChangeModePollFD:
		if !ok {
			r.problem("%v for an fd never added", e)
		} else if e.poll.PrevEvents != cur {
			r.problem("%v: the fd's interest was %v", e, cur)
		}
		if e.poll.Events == e.poll.PrevEvents {
			r.problem("%v: no change", e)
		}
		if e.poll.Events&^(evlib.Readable|evlib.Writable) != 0 {
			r.problem("%v: interest beyond Readable|Writable", e)
		}
		r.watched[e.fd] = e.poll.Events
	}
}

// snapshot returns a copy of the events so far.
func (r *recorder) snapshot() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.events...)
}

// mark returns the sequence number the next event will get.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// waitEvent waits for an event matching pred and returns it.
func (r *recorder) waitEvent(t testing.TB, what string, pred func(event) bool) event {
	t.Helper()
	return r.waitEventFrom(t, what, 0, pred)
}

// waitEventFrom waits for an event from sequence number from on that
// matches pred and returns it. The hang guard bounds the whole wait, not
// the wait for each event: a loop that keeps delivering other events (a
// backend reporting an fd over and over) must not hold it off.
func (r *recorder) waitEventFrom(t testing.TB, what string, from int, pred func(event) bool) event {
	t.Helper()
	guard := time.NewTimer(hang)
	defer guard.Stop()
	for {
		r.mu.Lock()
		for _, e := range r.events[from:] {
			if pred(e) {
				r.mu.Unlock()
				return e
			}
		}
		from = len(r.events)
		ch := r.notify
		r.mu.Unlock()
		select {
		case <-ch:
		case <-guard.C:
			t.Fatalf("conformance: no %s after %v (hang guard)", what, hang)
		}
	}
}

// count returns how many events match pred.
func (r *recorder) count(pred func(event) bool) int {
	n := 0
	for _, e := range r.snapshot() {
		if pred(e) {
			n++
		}
	}
	return n
}

// verify fails the test with every invariant broken so far.
func (r *recorder) verify(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.problems) > 0 {
		t.Fatalf("conformance: callback invariants broken:\n  %s", strings.Join(r.problems, "\n  "))
	}
}

// final checks what must hold once the context is destroyed.
func (r *recorder) final(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	for _, p := range r.protos {
		if r.inits[p] != 1 || r.destroy[p] != 1 {
			r.problem("protocol %q got %d PROTOCOL_INIT and %d PROTOCOL_DESTROY, want 1 and 1", p, r.inits[p], r.destroy[p])
		}
	}
	for c, n := range r.adopted {
		if n == 1 && r.closed[c] != 1 {
			r.problem("fd %d: RAW_ADOPT with %d RAW_CLOSE, want exactly 1", c.FD(), r.closed[c])
		}
	}
	if len(r.watched) > 0 {
		r.problem("fds %v never got DEL_POLL_FD", r.watched)
	}
	r.mu.Unlock()
	r.verify(t)
}

// Predicates over events.
func is(reason core.Reason, c *core.Conn) func(event) bool {
	return func(e event) bool { return e.reason == reason && (c == nil || e.conn == c) }
}

// harness is a core context on the backend under test, with every
// protocol callback wrapped by a recorder. Its helpers fail t; a subtest
// using a harness of its parent's takes h.with(t), which shares the rest.
type harness struct {
	t *testing.T
	*harnessState
}

// harnessState is what every copy of a harness (see with) shares.
type harnessState struct {
	ctx     *core.Context
	th      *core.Thread
	rec     *recorder
	runErr  chan error
	runG    atomic.Uint64
	started bool
	done    bool
	host    *hostRun   // foreign mode: the application's loop of thread 0
	hosts   []*hostRun // foreign mode: every thread's loop, thread order
}

// newHarness creates a context on the backend under test. Info.EventLib is
// set by the harness; each protocol's callback is wrapped by the recorder.
// The context is destroyed at the end of the test and the recorder's
// final checks run then.
func (s *suite) newHarness(t *testing.T, info core.Info) *harness {
	t.Helper()
	info.EventLib = s.name
	info.Options = 0
	var names []string
	for i := range info.Protocols {
		names = append(names, info.Protocols[i].Name)
	}
	h := &harness{t: t, harnessState: &harnessState{rec: newRecorder(names), runErr: make(chan error, 1)}}
	// A copy: tests share one Info between harnesses, and each wraps the
	// callbacks for itself only.
	info.Protocols = append([]core.Protocol(nil), info.Protocols...)
	for i := range info.Protocols {
		user := info.Protocols[i].Callback
		info.Protocols[i].Callback = func(ev core.Event) error {
			h.rec.enter(ev)
			defer h.rec.exit(ev)
			if user == nil {
				return nil
			}
			return user(ev)
		}
	}
	if s.host != nil {
		h.setupHost(s.host, &info)
	}
	ctx, err := core.New(info)
	require.NoError(t, err)
	require.Equal(t, s.name, ctx.EventLib(), "core.New picked another backend")
	h.ctx, h.th = ctx, ctx.Thread(0)
	for _, r := range h.hosts {
		r.th = ctx.Thread(r.thread)
	}
	t.Cleanup(h.cleanup)
	return h
}

// with returns h bound to t, a subtest of the test h was made for: its
// helpers then fail t, not the parent (FailNow must be called on the
// goroutine of the test it fails). The context, its state and its cleanup
// stay h's.
func (h *harness) with(t *testing.T) *harness {
	return &harness{t: t, harnessState: h.harnessState}
}

// start runs the context on a new goroutine (in foreign mode: the host's
// loops, as the application would, thread 0's on that goroutine).
func (h *harness) start() {
	h.t.Helper()
	require.False(h.t, h.started, "harness started twice")
	h.started = true
	ready := make(chan struct{})
	go func() {
		g := goid.ID()
		if h.host != nil && h.host.rl != nil {
			g = h.host.runG.Load() // a RunLoop runs on a goroutine of its own
		}
		h.runG.Store(g)
		close(ready)
		h.runErr <- h.run(context.Background())
	}()
	<-ready
}

// do runs f on the loop goroutine (through Thread.Post) and waits for it.
func (h *harness) do(f func()) {
	h.t.Helper()
	done := make(chan struct{})
	require.NoError(h.t, h.th.Post(func() { f(); close(done) }))
	waitCh(h.t, done, "posted function to run")
}

// sync waits for two full loop passes, so that whatever was ready or
// pending when it was called has been handled.
func (h *harness) sync() {
	h.t.Helper()
	h.do(func() {})
	h.do(func() {})
}

// fdClosed waits for the core to close fd, for at most 100 passes: at the
// end of the pass that closed its connection, or, on a backend that closes
// fds itself (evlib.FDCloser) or in a loop the application owns, once the
// events of that pass's batch or wait are over.
func (h *harness) fdClosed(fd int) bool {
	h.t.Helper()
	for range 100 {
		h.sync()
		if !fdOpen(fd) {
			return true
		}
	}
	return false
}

// destroy destroys the context and waits for Done and for Run to return nil.
func (h *harness) destroy() {
	h.t.Helper()
	require.NoError(h.t, h.ctx.Destroy())
	waitCh(h.t, h.ctx.Done(), "Done after Destroy")
	if h.started && !h.done {
		h.done = true
		require.NoError(h.t, waitCh(h.t, h.runErr, "Run to return after Destroy"))
	}
}

// waitDone waits, without calling Destroy, for a destruction to complete
// and for Run to return nil.
func (h *harness) waitDone() {
	h.t.Helper()
	waitCh(h.t, h.ctx.Done(), "Done")
	if h.started && !h.done {
		h.done = true
		require.NoError(h.t, waitCh(h.t, h.runErr, "Run to return after destruction"))
	}
}

func (h *harness) cleanup() {
	h.ctx.Destroy()
	select {
	case <-h.ctx.Done():
	case <-timeAfterHang():
		h.t.Errorf("conformance: context not destroyed after %v (hang guard)", hang)
		return
	}
	if h.started && !h.done {
		h.done = true
		select {
		case err := <-h.runErr:
			if err != nil {
				h.t.Errorf("conformance: Run returned %v after Destroy, want nil", err)
			}
		case <-timeAfterHang():
			h.t.Errorf("conformance: Run did not return after Destroy (hang guard)")
			return
		}
	}
	h.rec.final(h.t)
}
