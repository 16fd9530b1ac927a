//go:build unix

package conformance

import (
	"errors"
	"slices"

	"github.com/plugloop/plugloop/core"
)

// The application acting from inside the poll-fd callbacks about one of its
// connections: ADD_POLL_FD (as the connection is adopted or accepted, or
// watched again after the core parked it), CHANGE_MODE_POLL_FD and
// DEL_POLL_FD (the core parking it, or closing it). A step arms an action for
// the next such callback of a reason; a connection may come with one for
// the ADD_POLL_FD of its adoption. The model acts only in a poll-fd
// callback that the core makes on its own (its pass, the closes at the end
// of a callback, the accept), not in one nested in a call the model makes
// (CallbackOnWritable, RxFlowControl, RelayTo...), whose result the model is
// interpreting: such an action waits for the next one. LOCK_POLL and
// UNLOCK_POLL about a connection are taken as the change they bracket (for
// an accepted connection, its LOCK_POLL before the ADD_POLL_FD that binds
// it is not known to be its).
//
// What the model expects, from ReasonLockPoll's doc (a Close made there
// takes effect once the core's step that made the change is done) and from
// each call's own doc, which do not say "not in a poll-fd callback":
//
//   - Write says ErrNotWritable (ErrClosed once closing or reset,
//     ErrWriteClosed after CloseWrite, ErrRelaying on a relay's target, as
//     anywhere outside RAW_WRITEABLE): every action starts with one.
//   - In the DEL_POLL_FD of a connection the core is closing, and its
//     brackets (Conn.Closed: its close runs, RAW_CLOSE comes next), every
//     call says ErrClosed and changes nothing: RAW_CLOSE keeps the close's
//     reason.
//   - In the ADD_POLL_FD of an adoption or accept (and its brackets),
//     before RAW_ADOPT, the connection is open (the core's rule for
//     Close): Close returns nil and the connection gets RAW_ADOPT, then
//     RAW_CLOSE with a nil Err; Abort
//     likewise, RAW_CLOSE with ErrAborted after RAW_ADOPT (nothing of the
//     connection between); CallbackOnWritable asks for a RAW_WRITEABLE that comes
//     after RAW_ADOPT, and RAW_ADOPT's doc allows it already; RxFlowControl
//     pauses or resumes as from RAW_ADOPT; SetTimer, CloseWrite (nothing was
//     written: the peer reads end of stream) work as they would in
//     RAW_ADOPT. RelayTo is not tried before RAW_ADOPT: a relay's source or
//     target is a connection the application was given.
//   - In the poll-fd callbacks of a client connection still connecting
//     (the ADD_POLL_FD of its socket, the CHANGE_MODE_POLL_FD that watches
//     it for the connect's end and the one that takes it back to reading,
//     their brackets, the DEL_POLL_FD of a refused attempt: see
//     connectPolls), from Connect's and ReasonLockPoll's docs: Close and
//     Abort return nil, the connection stays Connecting until the core's
//     step is done, then gets CLIENT_CONNECTION_ERROR with ErrClosed, after
//     the DEL_POLL_FD of every socket added for it, and nothing else (no
//     RAW_ADOPT); CloseWrite says ErrInvalid. Nothing else is tried before
//     RAW_ADOPT.
//   - Anywhere else the connection is open, each call works as it does in
//     any other callback of the connection, and the model expects what it
//     expects there: after Close or Abort nothing of the connection but
//     RAW_CLOSE (Abort's may come after what else the core's step
//     delivers, as Close's: see core.Conn.Abort), a relay started, a
//     RAW_WRITEABLE asked for, rx paused.
//
// A connection accepted from the context's listener is bound to the
// model's connection in its ADD_POLL_FD (the application's SetUser there),
// so that it gets RAW_ADOPT of the model's.

// pollReasons maps a step's byte to the poll-fd reason an action waits
// for: mode changes are the most frequent.
var pollReasons = []core.Reason{core.ReasonAddPollFD, core.ReasonChangeModePollFD, core.ReasonChangeModePollFD, core.ReasonDelPollFD,
	core.ReasonLockPoll, core.ReasonChangeModePollFD, core.ReasonDelPollFD, core.ReasonUnlockPoll}

// pollActions maps a byte to an action in a poll-fd callback: closing ones
// more often than elsewhere, the rule for them being what the core's docs
// say of these callbacks.
var pollActions = weighted[actionKind]([]int{
	actWrite: 3, actPause: 2, actResume: 3, actClose: 3, actError: 1, actTimer: 2, actThreadTimer: 1, actCloseWrite: 2,
	actAbort: 3, actRelay: 3,
})

// decodePollAction is decodeAction for a poll-fd callback of reason r.
func decodePollAction(a, b byte, r core.Reason) modelAction {
	act := decodeAction(a, b)
	act.kind = pollActions[int(a)%len(pollActions)]
	act.poll = r
	return act
}

// addAction decodes what a connection does in the ADD_POLL_FD of its
// adoption, or nil for nothing (three in four).
func addAction(sel, b, k byte) *modelAction {
	if (sel+k)&3 != 0 {
		return nil
	}
	act := decodePollAction(b*7+k+sel>>2, b^sel, core.ReasonAddPollFD)
	return &act
}

// openAction is what a connection does in a poll-fd callback of its
// opening, or nil: addAction's, or for a client connection (one in two),
// Close, Abort (each one in four) or another action, in one of the
// callbacks of its connecting (see connectPolls).
func openAction(kind connKind, sel, b, k byte) *modelAction {
	if !kind.client() {
		return addAction(sel, b, k)
	}
	if (sel+k)&1 != 0 {
		return nil
	}
	act := decodePollAction(b*7+k+sel>>2, b^sel, 0)
	switch b >> 3 & 3 {
	case 0:
		act.kind = actClose
	case 1:
		act.kind = actAbort
	}
	cp := connectPolls[int(sel>>1^b>>5)%len(connectPolls)]
	act.poll, act.skip = cp.r, cp.skip
	return &act
}

// connectPolls are the poll-fd callbacks of a connecting connection an
// action of its opening waits for: its socket's ADD_POLL_FD, the
// CHANGE_MODE_POLL_FD that watches it for the connect's end, the second one
// that takes it back to reading once connected (the connection is still
// connecting: see ReasonLockPoll), the brackets, and the DEL_POLL_FD of a
// refused attempt's socket. An action whose callback does not come while
// it connects waits for one after RAW_ADOPT, as any armed one.
var connectPolls = []struct {
	r    core.Reason
	skip int
}{
	{core.ReasonAddPollFD, 0}, {core.ReasonChangeModePollFD, 0}, {core.ReasonChangeModePollFD, 1},
	{core.ReasonLockPoll, 0}, {core.ReasonUnlockPoll, 1}, {core.ReasonLockPoll, 2}, {core.ReasonDelPollFD, 0},
}

// onPoll is the model's poll-fd callback.
func (m *model) onPoll(ev core.Event) {
	c := ev.Conn
	if c == nil {
		return // the thread's wake fd
	}
	mc, _ := c.User().(*modelConn)
	if mc == nil && ev.Reason == core.ReasonAddPollFD && m.acceptNext != nil && c.FD() != m.ln.FD() {
		mc, m.acceptNext = m.acceptNext, nil
		c.SetUser(mc)
	}
	if mc == nil {
		return
	}
	a := &mc.app
	switch {
	case a.closed:
		m.problem(mc, "%v after %s", ev.Reason, mc.end())
		return
	case a.c != nil && c != a.c:
		m.problem(mc, "%v for another Conn than the one adopted", ev.Reason)
		return
	}
	if a.connecting {
		// The fds of its attempts: all deleted by CLIENT_CONNECTION_ERROR,
		// the winner's alone left by RAW_ADOPT.
		switch ev.Reason {
		case core.ReasonAddPollFD:
			a.dialFDs[ev.Poll.FD] = true
			a.dialAdds++
		case core.ReasonDelPollFD:
			delete(a.dialFDs, ev.Poll.FD)
		}
	}
	i := slices.IndexFunc(a.onPoll, func(act modelAction) bool { return act.poll == ev.Reason })
	if i < 0 {
		return
	}
	if m.inApp > 0 {
		m.pollNest++
		return
	}
	if a.onPoll[i].skip > 0 {
		a.onPoll[i].skip--
		return
	}
	act := a.onPoll[i]
	a.onPoll = append(a.onPoll[:i:i], a.onPoll[i+1:]...)
	if m.pollActs == nil {
		m.pollActs = map[core.Reason]int{}
	}
	m.pollActs[ev.Reason]++
	m.inApp++
	defer func() { m.inApp-- }()
	if c.Closed() {
		m.pollClosed++
		m.actClosed(mc, c, ev.Reason, act)
		return
	}
	if a.connecting {
		m.actConnecting(mc, c, ev.Reason, act)
		return
	}
	if a.c == nil {
		a.c = c // before RAW_ADOPT: the calls below use it
	}
	if a.adopted {
		m.relayClosing(mc)
	}
	m.pollWrite(mc, ev.Reason)
	if !a.adopted {
		switch act.kind {
		case actError, actRelay:
			// A poll-fd callback's error is ignored; no relay before
			// RAW_ADOPT.
		case actAbort:
			m.abort(mc)
		default:
			m.applyOpen(mc, act)
		}
	} else if act.kind != actError { // ignored: the Write above stands for it
		_ = m.apply(mc, act)
	}
	if i := slices.Index(m.aborting, mc); i >= 0 {
		// Aborted: RAW_CLOSE comes once the core's step is done, not
		// before what else that step delivers (RAW_ADOPT of this one,
		// callbacks of others); nothing of this one but RAW_CLOSE after
		// Abort returned (after RAW_ADOPT, before it).
		m.aborting = append(m.aborting[:i:i], m.aborting[i+1:]...)
	}
}

// applyOpen is apply for a connection open but not adopted yet.
func (m *model) applyOpen(mc *modelConn, act modelAction) {
	switch act.kind {
	case actWrite:
		m.queueWrite(mc, act.size)
	case actPause:
		m.pause(mc)
	case actResume:
		m.resume(mc)
	case actClose:
		m.close(mc)
	case actTimer:
		m.setTimer(mc, act.d)
	case actThreadTimer:
		m.threadTimer(act.j, act.d, nil, nil)
	case actCloseWrite:
		m.closeWrite(mc)
	}
}

// actConnecting does act in a poll-fd callback of a client connection
// still connecting. Close and Abort give it up: they return nil, and the
// connection gets CLIENT_CONNECTION_ERROR with ErrClosed once the core's
// step is done, and nothing else (no RAW_ADOPT, no RAW_CLOSE); a second one
// says ErrClosed. CloseWrite says ErrInvalid. Nothing else is tried before
// RAW_ADOPT.
func (m *model) actConnecting(mc *modelConn, c *core.Conn, r core.Reason, act modelAction) {
	a := &mc.app
	var err error
	switch act.kind {
	case actClose:
		err = c.Close()
	case actAbort:
		err = c.Abort()
	case actCloseWrite:
		if err := c.CloseWrite(); !errors.Is(err, core.ErrInvalid) {
			m.problem(mc, "CloseWrite in its %v while connecting returned %v, want ErrInvalid", r, err)
		}
		return
	default:
		return
	}
	switch {
	case a.closing && !errors.Is(err, core.ErrClosed):
		m.problem(mc, "a second %v in its %v while connecting returned %v, want ErrClosed", act, r, err)
	case !a.closing && err != nil:
		m.problem(mc, "%v in its %v while connecting returned %v, want nil", act, r, err)
	}
	if err == nil {
		a.closing = true
	}
	if !c.Connecting() || c.Closed() {
		// The give-up takes effect once the core's step is done.
		m.problem(mc, "%v in its %v while connecting: then Connecting says %v, Closed %v, before the core's step is done", act, r, c.Connecting(), c.Closed())
	}
}

// pollWrite checks that Write is refused in a poll-fd callback.
func (m *model) pollWrite(mc *modelConn, r core.Reason) {
	a := &mc.app
	_, err := a.c.Write(nil)
	var want error
	switch {
	case a.closing:
		want = core.ErrClosed
	case a.wrClosed:
		want = core.ErrWriteClosed
	case a.relayFrom != nil && m.relayTarget(mc, "Write in "+r.String(), err):
		// ErrRelaying; or the relay ended in the core with its source's
		// input (the model ends it as done), and the answer is below.
		return
	default:
		want = core.ErrNotWritable
	}
	// Reset by its peer, closed for an error the callback returned, or
	// closing, both sides ended.
	if errors.Is(err, want) || errors.Is(err, core.ErrClosed) && (a.peerClosed || a.noWrite || a.errored || m.bothEnded(a)) {
		return
	}
	m.problem(mc, "Write in %v returned %v, want %v (Close or Abort %v, CloseWrite %v, relay from %v, draining %v)", r, err, want, a.closing, a.wrClosed, a.relayFrom, a.c.Draining())
}

// actClosed does act in the DEL_POLL_FD of a connection the core is
// closing (or the LOCK_POLL or UNLOCK_POLL around it): every call says ErrClosed, and changes nothing.
func (m *model) actClosed(mc *modelConn, c *core.Conn, r core.Reason, act modelAction) {
	type call struct {
		name string
		f    func() error
	}
	calls := []call{{"Write", func() error { _, err := c.Write(nil); return err }}}
	switch act.kind {
	case actWrite:
		calls = append(calls, call{"CallbackOnWritable", c.CallbackOnWritable})
	case actPause, actResume:
		on := act.kind == actResume
		calls = append(calls, call{"RxFlowControl", func() error { return c.RxFlowControl(on) }})
	case actClose:
		calls = append(calls, call{"Close", c.Close})
	case actAbort:
		calls = append(calls, call{"Abort", c.Abort})
	case actTimer:
		calls = append(calls, call{"SetTimer", func() error { return c.SetTimer(act.d) }})
	case actCloseWrite:
		calls = append(calls, call{"CloseWrite", c.CloseWrite})
	case actRelay:
		if to := m.pickTarget(mc, act.to); to != mc && to.app.c != nil {
			calls = append(calls, call{"RelayTo", func() error { return c.RelayTo(to.app.c) }})
		}
	}
	for _, cl := range calls {
		if err := cl.f(); !errors.Is(err, core.ErrClosed) {
			m.problem(mc, "%s in the %v of its close returned %v, want ErrClosed", cl.name, r, err)
		}
	}
}
