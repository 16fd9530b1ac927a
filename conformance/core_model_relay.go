//go:build unix

package conformance

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
)

// The Model test's relays (Conn.RelayTo): the application relays one
// connection's input to another, and what the target's peer receives is
// then a sequence of runs, each of one stream: the target's own writes,
// then the source's input, then the target's writes again once the relay
// ended. The runs are the model's outStream, shared by the loop goroutine
// (which makes them) and the test goroutine (whose peer checks every byte
// it reads against them).
//
// A relay that ends by dropping what it held (the source's error, Close or
// Abort, or the target's end) leaves its run open: how many of the
// source's bytes reached the target is not known, so nothing may follow
// in the target's stream (the model writes to it no more) and the
// counts of bytes are not checked for it, only their order and content.
// The source whose target went is paused by the core (checked); the model
// then closes or aborts it, as a proxy does, or resumes it and takes its
// input in RAW_RX (see resumeSource): that input goes on after the bytes
// the relay dropped, from an offset the model learns from the bytes
// themselves (or, for a TCP source the core reads itself, from the
// socket), and from there on every byte is checked, in order, as before
// the relay. What the target's peer got of the relayed run and what RAW_RX
// delivers after it must not overlap: the run is capped where RAW_RX
// resumed.

// outSeg is a run of what a connection's peer receives: from byte at of
// the peer's received stream, n bytes (< 0: open, a relay lasting or one
// that dropped bytes) of stream (id, dir) from its byte off.
type outSeg struct {
	id      int
	dir     direction
	off, at int64
	n       int64
	// An open run: the source's offset past the last byte the peer got
	// (seen), and, once its source's RAW_RX resumed after the relay
	// ended, the offset it resumed at (limit, if capped), which no byte
	// of the run reaches.
	seen   int64
	limit  int64
	capped bool
}

type outStream struct {
	mu   sync.Mutex
	segs []outSeg
}

// end returns the length of the stream, if known: no run is open.
func (o *outStream) end() (int64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var at int64
	for _, s := range o.segs {
		if s.n < 0 {
			return 0, false
		}
		at = s.at + s.n
	}
	return at, true
}

// write appends n bytes of the connection's own stream, from off.
func (o *outStream) write(id int, off, n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var at int64
	if k := len(o.segs); k > 0 {
		last := &o.segs[k-1]
		if last.n < 0 {
			panic("conformance: model: a write after an open run")
		}
		if last.id == id && last.dir == toPeer && last.off+last.n == off {
			last.n += n
			return
		}
		at = last.at + last.n
	}
	o.segs = append(o.segs, outSeg{id: id, dir: toPeer, off: off, at: at, n: n})
}

// unwrite takes back the last n bytes write added: the Write failed.
func (o *outStream) unwrite(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	last := &o.segs[len(o.segs)-1]
	if last.n -= n; last.n == 0 {
		o.segs = o.segs[:len(o.segs)-1]
	}
}

// relay opens a run of the source src's input from its byte off.
func (o *outStream) relay(src int, off int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var at int64
	if k := len(o.segs); k > 0 {
		at = o.segs[k-1].at + o.segs[k-1].n
	}
	o.segs = append(o.segs, outSeg{id: src, dir: toApp, off: off, at: at, n: -1})
}

// relayEnd closes the open run at the source's byte end.
func (o *outStream) relayEnd(end int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	last := &o.segs[len(o.segs)-1]
	last.n = end - last.off
}

// open returns the open run's start in the peer's stream and in the
// source's, if the last run is open.
func (o *outStream) open() (at, off int64, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if k := len(o.segs); k > 0 && o.segs[k-1].n < 0 {
		return o.segs[k-1].at, o.segs[k-1].off, true
	}
	return 0, 0, false
}

// diff returns "" if p is what the peer receives from its byte pos on,
// else where and how it differs.
func (o *outStream) diff(pos int64, p []byte) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	i := 0
	for len(p) > 0 {
		for i < len(o.segs) && o.segs[i].n >= 0 && pos >= o.segs[i].at+o.segs[i].n {
			i++
		}
		if i == len(o.segs) {
			return fmt.Sprintf("%d bytes from byte %d, past the %d written and relayed", len(p), pos, pos)
		}
		s := o.segs[i]
		k := int64(len(p))
		if s.n >= 0 {
			k = min(k, s.at+s.n-pos)
		}
		if d := streamDiff(s.id, s.dir, s.off+pos-s.at, p[:k]); d != "" {
			if s.dir == toApp {
				return fmt.Sprintf("in the run relayed from conn %d's input (from byte %d of the peer's stream): %s", s.id, s.at, d)
			}
			return fmt.Sprintf("in the run written from byte %d of the peer's stream: %s", s.at, d)
		}
		if s.n < 0 {
			end := s.off + pos - s.at + k
			if s.capped && end > s.limit {
				return fmt.Sprintf("in the run relayed from conn %d's input: its bytes %d to %d, which RAW_RX delivered from byte %d on after the relay ended (a byte relayed and delivered twice)",
					s.id, max(s.limit, s.off+pos-s.at), end, s.limit)
			}
			o.segs[i].seen = max(o.segs[i].seen, end)
		}
		p, pos = p[k:], pos+k
	}
	return ""
}

// relayed returns the last run's source offset past the last byte the
// peer got of it, if it is an open run of src's input.
func (o *outStream) relayed(src int) (seen int64, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if k := len(o.segs); k > 0 && o.segs[k-1].n < 0 && o.segs[k-1].id == src {
		last := o.segs[k-1]
		return max(last.seen, last.off), true
	}
	return 0, false
}

// capRelay caps the last run, an open one of src's input, at the source's
// offset limit (see outSeg).
func (o *outStream) capRelay(src int, limit int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if k := len(o.segs); k > 0 && o.segs[k-1].n < 0 && o.segs[k-1].id == src {
		o.segs[k-1].limit, o.segs[k-1].capped = limit, true
	}
}

// relaySlot chooses a relay's target by b: another slot than the
// source's, or rarely (or with no other) its own, for ErrInvalid.
func relaySlot(slot, n int, b byte) int {
	if n == 1 || b%16 == 0 {
		return slot
	}
	return (slot + 1 + int(b>>4)%(n-1)) % n
}

// relayTarget picks the target of a relay from mc by b: the slot
// relaySlot says, or the next one with an open connection that can be a
// target (slots hold closed connections until reopened); mc itself
// rarely, for ErrInvalid.
func (m *model) pickTarget(mc *modelConn, b byte) *modelConn {
	n := m.cfg.conns
	start := relaySlot(mc.slot, n, b)
	if start == mc.slot {
		return mc
	}
	for i := range n {
		to := m.appSlots[(start+i)%n]
		if to != mc && to.app.adopted && !to.app.closing && !to.app.closed && canTarget(to) {
			return to
		}
	}
	return m.appSlots[start]
}

// canTarget reports whether the model relays to mc: a pipe's read end,
// which the model adopts, has no write side (it relays from one).
func canTarget(mc *modelConn) bool { return mc.kind != kindPipe }

// relayTo has the application call mc.RelayTo(to), checking the sentinel
// it returns where the model can tell it.
func (m *model) relayTo(mc, to *modelConn) {
	a, b := &mc.app, &to.app
	if !a.adopted || a.closed || a.gap {
		return // (a source whose offset is unknown starts no run)
	}
	m.relayClosing(mc)
	m.relayClosing(to)
	if to == mc {
		if err := a.c.RelayTo(a.c); !errors.Is(err, core.ErrInvalid) {
			m.problem(mc, "RelayTo itself returned %v, want ErrInvalid", err)
		}
		m.relayBad++
		return
	}
	if !canTarget(to) || !b.adopted || b.closed {
		return
	}
	if _, known := to.out.end(); !known && b.relayFrom == nil {
		return // its stream has a run of unknown length: nothing may follow
	}
	// The core learns of a peer's end, or a timeout's, before the model
	// does: ErrClosed may come first then.
	now := time.Now()
	// Except a source whose peer only half-closed, with AllowHalfOpen:
	// it stays open until RAW_RX_END, and until then it relays (what
	// it kept first), whether or not the core read the end yet.
	endedOpen := m.cfg.halfOpen && a.peerEnded && !a.peerClosed && !a.rxEnded && mc.kind != kindPipe
	maybeClosed := a.peerEnded && !endedOpen || b.peerClosed || a.timeoutPending && !now.Before(a.timeoutAt) || b.timeoutPending && !now.Before(b.timeoutAt)
	var want error
	switch {
	case a.closing || b.closing || a.rxEnded:
		want = core.ErrClosed
	case b.wrClosed:
		want = core.ErrWriteClosed
	case a.relayTo != nil, b.relayFrom != nil:
		want = core.ErrRelaying
	}
	err := a.c.RelayTo(b.c)
	if err == nil && want == core.ErrRelaying && m.relaysDoneUnseen(mc, to) {
		// The relays in the way (mc's own, the one to to) ended with
		// their sources' input, not told yet: a source whose peer ended
		// may stay open after its relay's end (answering, without
		// AllowHalfOpen), and it relays again.
		want = nil
	}
	switch {
	case want == nil && err == nil:
	case errors.Is(err, core.ErrClosed) && maybeClosed:
	case want != nil && errors.Is(err, want):
	default:
		m.problem(mc, "RelayTo(%v) returned %v, want %v (closing %v/%v, input ended %v, target write-closed %v, relaying %v/%v)",
			to, err, want, a.closing, b.closing, a.rxEnded, b.wrClosed, a.relayTo, b.relayFrom)
	}
	if err != nil {
		m.relayBad++
		return
	}
	m.relays++
	if a.peerEnded {
		m.relaysEnded++
	}
	a.relayTo, b.relayFrom = to, mc
	// RAW_WRITEABLE asked for is dropped, and what the model had to write
	// in it never is.
	b.wantW, b.chunks = false, nil
	to.out.relay(mc.id, a.received)
}

// relayDoneUnseen reports whether src's relay may have ended with its
// input (the peer ended it), though RAW_RX_END or RAW_CLOSE did not say so
// yet; if so the model ends it as done.
func (m *model) relayDoneUnseen(src *modelConn) bool {
	if !mayBeDoneUnseen(src) {
		return false
	}
	m.relayEnded(src, true)
	return true
}

// mayBeDoneUnseen reports whether src's relay may have ended with its
// input though nothing said so yet (see relayDoneUnseen).
func mayBeDoneUnseen(src *modelConn) bool {
	return src != nil && src.app.peerEnded && !src.app.closing
}

// relaysDoneUnseen is relayDoneUnseen for both relays in the way of
// mc.RelayTo(to), mc's own and the one to to, that RelayTo returning nil
// says ended: if both may have, the model ends them as done.
func (m *model) relaysDoneUnseen(mc, to *modelConn) bool {
	var srcs []*modelConn
	if mc.app.relayTo != nil {
		srcs = append(srcs, mc)
	}
	if src := to.app.relayFrom; src != nil && src != mc {
		srcs = append(srcs, src)
	}
	for _, src := range srcs {
		if !mayBeDoneUnseen(src) {
			return false
		}
	}
	for _, src := range srcs {
		m.relayEnded(src, true)
	}
	return len(srcs) > 0
}

// relayEnded ends src's relay in the model; done: with its input, every
// byte passed on.
func (m *model) relayEnded(src *modelConn, done bool) {
	a := &src.app
	dst := a.relayTo
	if dst == nil {
		return
	}
	a.relayTo, dst.app.relayFrom = nil, nil
	// The target whose peer ended closes with io.EOF once the relay
	// ended, queued at once if in a callback; a Close in that callback
	// returns nil all the same (see the model's onClose).
	dst.app.relayHup = dst.app.relayHup || dst.app.peerEnded
	if done {
		dst.out.relayEnd(a.peerSent)
		a.received = a.peerSent // to the target's peer, which checks them
		m.relayDone++
	}
}

// relaysEnd is mc's Close, Abort or RAW_CLOSE for its relays: as a source
// it leaves its target's stream open-ended; as a target it pauses its
// source, which the model then closes (see the top of the file).
func (m *model) relaysEnd(mc *modelConn, err error) {
	a := &mc.app
	done := a.closed && errors.Is(err, io.EOF) && !a.closing
	if a.relayTo != nil {
		m.relayEnded(mc, done)
	}
	if done && a.relayMaybeDone {
		a.received = a.peerSent // see below
	}
	src := a.relayFrom
	if src == nil {
		return
	}
	m.relayEnded(src, false)
	m.relayGone++
	s := &src.app
	if s.closed || s.closing || s.errored || m.destroying.Load() {
		// Closing already (a callback's error: the RAW_CLOSE of a target
		// whose end that close brought comes first), or Destroy closes
		// all with ErrDestroyed, pausing none.
		return
	}
	if !s.c.RxPaused() && !s.peerEnded {
		m.problem(src, "RxPaused false after its relay's target %v ended", mc)
	}
	s.paused = true
	// The source's peer ended its stream: the relay may have ended with
	// it, every byte passed on, before the target's end came; then the
	// source closes for its end (or RAW_RX_END comes), which Close and
	// Abort may meet.
	s.relayMaybeDone = s.peerEnded
	switch {
	case !s.peerEnded && m.relayGone%3 != 0:
		m.resumeSource(src, mc)
	case src.id%2 == 0:
		m.close(src)
	default:
		m.abort(src)
	}
}

// resumeSource resumes src, the source of a relay that ended with its
// target dst: its input comes in RAW_RX again, after what the relay
// dropped. Where it resumes is known at once for a TCP socket the core
// reads itself (what it read of the socket is the relay's end: paused, it
// keeps nothing, and the peer did not end its stream, so no hang-up made
// it read ahead); otherwise the first RAW_RX tells (see gapRX). Only a
// source whose peer did not end its stream: one that did may have ended
// its relay before the target did, and closes for that end.
func (m *model) resumeSource(src, dst *modelConn) {
	a := &src.app
	a.gap, a.gapMin, a.gapOut, a.gapBuf, a.gapAt = true, a.received, &dst.out, nil, -1
	if tcp := src.kind.tcp(); tcp && m.s.desc.Caps&evlib.CapBufferedRx == 0 {
		if n, ok := tcpTaken(a.c.FD()); ok {
			a.gapAt = src.readbuf + n
		}
	}
	m.resumed++
	m.resume(src)
}

// gapRX is RAW_RX of a source resumed after its relay's target ended,
// while the offset its input resumes at is not known: it finds it from
// the bytes (once there are enough to tell), or takes the one the socket
// said, and checks them there. It reports whether it gave the source up
// (aborted it).
func (m *model) gapRX(mc *modelConn, data []byte) bool {
	a := &mc.app
	a.gapBuf = append(a.gapBuf, data...)
	if a.gapAt >= 0 {
		m.gapResolve(mc, a.gapAt)
		return false
	}
	if len(a.gapBuf) < 16 {
		return false // too few bytes to tell where they are
	}
	// The offset is one of the stream's period: the one that lies
	// between the relay's start and what the peer may have sent.
	at := streamLocate(mc.id, toApp, a.gapMin, a.gapBuf)
	if at < 0 {
		m.problem(mc, "RAW_RX after its relay's target ended: %d bytes found nowhere in the peer's stream", len(a.gapBuf))
		a.gap, a.gapBuf = false, nil
		return false
	}
	at = a.gapMin + ((at-a.gapMin)%streamPeriod+streamPeriod)%streamPeriod
	sent := mc.peerMax.Load()
	switch {
	case at+int64(len(a.gapBuf)) > sent:
		m.problem(mc, "RAW_RX after its relay's target ended: bytes of the peer's stream from byte %d (+%d), past the relay's start %d and what the peer sent (%d)",
			at, len(a.gapBuf), a.gapMin, sent)
		a.gap, a.gapBuf = false, nil
	case at+streamPeriod+int64(len(a.gapBuf)) <= sent:
		// More than one period between: the offset cannot be told.
		// The bytes are the stream's, in order; the model gives the
		// source up, as where its input goes on is not known.
		m.gapUnknown++
		if d := streamDiff(mc.id, toApp, at, a.gapBuf); d != "" {
			m.problem(mc, "RAW_RX after its relay's target ended: %s", d)
		}
		a.gap, a.gapBuf = false, nil
		m.abort(mc)
		return true
	default:
		m.gapResolve(mc, at)
	}
	return false
}

// gapEnd resolves the gap of a source whose stream ended with every byte
// delivered (RAW_RX_END, or its close for the peer's end): what it got
// since the gap is the end of the stream.
func (m *model) gapEnd(mc *modelConn) {
	a := &mc.app
	at := a.peerSent - int64(len(a.gapBuf))
	if at < a.gapMin {
		m.problem(mc, "its stream ended after RAW_RX delivered %d bytes since its relay's target ended: more than the %d the peer sent after the relay's start",
			len(a.gapBuf), a.peerSent-a.gapMin)
		a.gap, a.gapBuf = false, nil
		return
	}
	m.gapResolve(mc, at)
}

// gapResolve checks the bytes delivered since the gap from the source's
// offset at, where its input resumed: past every byte the relay's target's
// peer got (a byte relayed must not come again), whose run is capped
// there (nor may it be relayed later on).
func (m *model) gapResolve(mc *modelConn, at int64) {
	a := &mc.app
	seen, ok := a.gapOut.relayed(mc.id)
	switch {
	case at < a.gapMin:
		m.problem(mc, "RAW_RX after its relay's target ended from byte %d of the peer's stream, before the relay's start %d", at, a.gapMin)
	case ok && at < seen:
		m.problem(mc, "RAW_RX after its relay's target ended from byte %d of the peer's stream, which the target's peer got up to %d: relayed and delivered twice", at, seen)
	}
	if ok {
		a.gapOut.capRelay(mc.id, at)
		m.gapDropped = max(m.gapDropped, at-seen)
	}
	if at == a.gapAt {
		m.gapsExact++
	}
	if d := streamDiff(mc.id, toApp, at, a.gapBuf); d != "" {
		m.problem(mc, "RAW_RX after its relay's target ended, from byte %d: %s", at, d)
	}
	a.received = at + int64(len(a.gapBuf))
	a.gap, a.gapBuf, a.gapOut = false, nil, nil
	m.gapsResolved++
}

// relayClosing ends mc's relays whose other end the core is closing,
// before its RAW_CLOSE: the core ends a relay as it starts to close one of
// its connections, and the other one's callbacks may come before that
// RAW_CLOSE (the target's RAW_RX_END, for the end of stream the close let
// it pass on).
func (m *model) relayClosing(mc *modelConn) {
	a := &mc.app
	if src := a.relayFrom; src != nil && src.app.c.Closed() {
		m.relayEnded(src, false)
	}
	if dst := a.relayTo; dst != nil && dst.app.c.Closed() {
		m.relaysEnd(dst, nil)
	}
}

// relayTarget checks a call of the application that a relay's target
// refuses (what: Write, CallbackOnWritable, CloseWrite) with err, and
// reports whether the call was refused: a relay the model still has may
// have ended in the core with its source's input.
func (m *model) relayTarget(mc *modelConn, what string, err error) bool {
	src := mc.app.relayFrom
	if src == nil {
		return false
	}
	if errors.Is(err, core.ErrRelaying) {
		m.relayRefused++
		return true
	}
	if a := &mc.app; errors.Is(err, core.ErrClosed) && (a.peerClosed || a.errored) {
		// Closed for its peer's reset, or closing, before the model
		// learns; whether the relay ended with its source's input
		// first is not known, and the target's RAW_CLOSE settles it
		// (relaysEnd: relayMaybeDone). Not taken for that end: the
		// relay may have dropped what it held, and the source, paused,
		// would resume at an offset the model had moved past.
		return true
	}
	if m.relayDoneUnseen(src) {
		return false
	}
	m.problem(mc, "%s of a relay's target returned %v, want ErrRelaying", what, err)
	return true
}
