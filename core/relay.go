//go:build unix

package core

import (
	"errors"
	"fmt"
	"io"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
)

const (
	// relayPipeSize is the capacity a relay asks for its pipe, what one
	// relay holds at most: 1 MiB, Linux's default fs.pipe-max-size and
	// the size Go's io.Copy asks for when it splices. Pages are taken as
	// bytes come, so an idle or slow relay costs less. Against a 64 KiB
	// or 256 KiB pipe it cut a bulk proxy's CPU per MB by about a quarter
	// (fewer, larger splices; see the README), and a user over
	// fs.pipe-user-pages-soft gets smaller pipes anyway.
	relayPipeSize = 1 << 20
	// relayBufSize is a copying relay's buffer: one of the core's reads.
	relayBufSize = rxBufSize
	// maxIdlePipes is how many empty pipes a thread keeps for its relays'
	// next bursts: a relay holds a pipe only while bytes are in it, so
	// an idle relay costs no fds and a busy one no pipe(2) per burst.
	maxIdlePipes = 16
)

// relayPipe is a pipe a relay splices through; r < 0 is none.
type relayPipe struct{ r, w, size int }

var noPipe = relayPipe{-1, -1, 0}

// relay moves a source connection's input to a target connection (see
// Conn.RelayTo). It takes input only while it holds nothing, so that what
// it holds never exceeds one pipe or buffer and, spliced, an EAGAIN from
// the source means the source is empty (a pipe with room can refuse too).
// A splicing relay takes a pipe from its thread for each burst and gives
// it back empty; where none can be had (no room below the fd limit) that
// burst is copied through buf.
type relay struct {
	src, dst *Conn
	splice   bool      // splice where a pipe can be had
	pipe     relayPipe // what it holds is in the pipe, if it has one
	held     int       // bytes taken from src that dst's socket has not taken yet
	buf      []byte    // without a pipe, what it holds is buf[off : off+held]
	off      int
	srcHup   bool // a hang-up of src was reported while the relay took no input
}

// live reports whether the relay has not ended.
func (r *relay) live() bool { return r.src.relayOut == r }

// How a relay ended, for endRelay.
type relayEnd uint8

const (
	relayDone    relayEnd = iota // src's end of stream, all taken before it passed on
	relaySrcGone                 // src closed or closing
	relayDstGone                 // dst closed or closing: src is paused
)

// RelayTo makes the core move c's input to dst from now on, without
// RAW_RX on c: inside the kernel with splice(2) through a pipe of the
// relay's own on Linux where the core reads its sockets itself (the epoll,
// poll, gnet and foreign backends), and through a buffer of the core's
// elsewhere (the netpoll adapter, which reads for the core, and systems
// without splice), with the same rules:
//
//   - Bounded: the relay holds at most one pipe's worth (1 MiB asked
//     for with F_SETPIPE_SZ, less if the kernel refuses; a copying relay,
//     64 KiB) and takes more from c only once dst's socket took all it
//     held. c is read only when the relay can take input, so a dst whose
//     peer does not read pushes back on c's peer through TCP.
//   - A relay holds a pipe only while bytes are in it: the thread lends
//     one for each burst and keeps up to 16 empty ones for the next, so
//     an idle relay costs no descriptors and a busy one no pipe(2) per
//     burst. Pipes count against the thread's fd limit; a burst that
//     finds no room for one is copied instead.
//   - dst's output belongs to the relay: dst.Write and
//     dst.CallbackOnWritable return ErrRelaying, and so does
//     dst.CloseWrite; a RAW_WRITEABLE dst asked for and did not get yet is
//     dropped. What the core held for dst when RelayTo was called leaves
//     first, followed by any input c had kept (read before, or from
//     WithReadbuf), then the relayed stream.
//   - c.RxFlowControl(false) pauses the relay and (true) resumes it;
//     paused, it takes nothing more from c, and TCP pushes back on c's
//     peer. Relayed bytes are activity for both connections' IdleTimeout.
//   - c's orderly end of stream ends the relay once every byte taken from
//     c reached dst's socket (or the output the core holds for dst): then
//     the usual rules apply to c, with Protocol.AllowHalfOpen a RAW_RX_END,
//     after which the application may pass the end on with dst.CloseWrite.
//     That holds for a c whose peer ended its stream before RelayTo, too
//     (a proxy that paused its client while it connected upstream): the
//     input c kept goes to dst first, and the relay ends as above, from
//     the loop once c is resumed (at once if it is not paused), not
//     inside RelayTo.
//   - c's read error or reset closes c with it, as without a relay
//     (RAW_CLOSE with an *OpError); what the relay held is dropped: the
//     stream was cut off, and its tail would pass it for a whole one to
//     dst's peer. c's RAW_CLOSE decides what becomes of dst.
//   - dst's write error, Close or Abort ends the relay and drops what it
//     held (at most one pipe's worth, taken from c but never sent: it was
//     bound for a dst that is gone), and pauses c (RxPaused reports true):
//     nothing c's peer sends from then on is taken unseen, and the
//     application, typically in dst's RAW_CLOSE, decides (Abort c, or
//     resume it and take the rest of its input in RAW_RX). c's
//     Close or Abort ends the relay too, dropping what it held, and leaves
//     dst as it is.
//   - Without AllowHalfOpen, dst whose peer ended its stream is answering
//     while the relay lasts: as with output held, it closes once the relay
//     ended and nothing is left, or at Info.CloseTimeout.
//
// c and dst must be distinct established stream connections (TCP or unix
// stream sockets, or pipes adopted as streams) of the same service thread;
// call it from a callback of that thread. A connection may be the source
// of one relay and the target of another, so two relays make a
// bidirectional proxy. Interest changes stay lazy: c is watched for input
// while the relay can take it, and dst for writability only once its
// socket refused bytes, dropped at the first writability that finds
// nothing to send. Stats counts Splices and Relayed bytes.
//
// Errors, with nothing changed: ErrInvalid for a nil or the same
// connection, one of another thread, one not established yet or one that
// is no stream; ErrClosed when either is closed or closing, c was reset
// or its end of stream was delivered already (RAW_RX_END: it has nothing
// left to relay, and the relay's end would go unseen), or dst was reset;
// ErrWriteClosed after dst.CloseWrite; ErrRelaying
// when c is the source of a relay or dst the target of one;
// ErrWrongGoroutine off the loop.
func (c *Conn) RelayTo(dst *Conn) error {
	if c == nil || dst == nil {
		return fmt.Errorf("%w: RelayTo with a nil connection", ErrInvalid)
	}
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	switch {
	case dst == c:
		return fmt.Errorf("%w: a connection cannot relay to itself", ErrInvalid)
	case dst.t != t:
		return fmt.Errorf("%w: RelayTo a connection of another service thread (%d, not %d)", ErrInvalid, dst.t.index, t.index)
	case c.state == stateConnecting || c.state == stateHandover:
		return fmt.Errorf("%w: RelayTo from a connection not established yet", ErrInvalid)
	case c.state != stateOpen || c.closeReq || c.draining || c.hup && (!errors.Is(c.hupErr, io.EOF) || c.rxEnded):
		// As every call on a closed connection, whatever the target. A
		// source whose peer ended in order may still hold input (kept
		// while paused) and relays it; after a reset, or once RAW_RX_END
		// told its end, there is no stream left to pass on.
		return ErrClosed
	case dst.state == stateConnecting || dst.state == stateHandover:
		return fmt.Errorf("%w: RelayTo a connection not established yet", ErrInvalid)
	case c.kind != evlib.KindStream || dst.kind != evlib.KindStream:
		return fmt.Errorf("%w: RelayTo from a %s to a %s: only streams relay", ErrInvalid, kindName(c.kind), kindName(dst.kind))
	case dst.gone():
		return ErrClosed
	case dst.wrClosed:
		return ErrWriteClosed
	case c.relayOut != nil:
		return fmt.Errorf("%w: the source relays already", ErrRelaying)
	case dst.relayIn != nil:
		return fmt.Errorf("%w: the target is relayed to already", ErrRelaying)
	}
	r := &relay{src: c, dst: dst, splice: sys.SpliceRelay && t.io == nil, pipe: noPipe}
	c.relayOut, dst.relayIn = r, r
	dst.wantWritable = false
	if len(c.rxbuf) > 0 {
		// Input c kept comes before the relayed stream.
		dst.out = append(dst.out, c.rxbuf...)
		c.rxbuf = nil
	}
	if len(dst.out) > 0 {
		t.waitWritable(dst) // sent at dst's next writability, before any relayed byte
	}
	switch {
	case c.hup:
		// Its input ended before: all of it was read (the core learns of
		// an orderly end only from a read), and what was kept went to dst
		// above. The relay ends at its first pull, in forced service
		// (or at the resume of a paused source), not inside this call:
		// RAW_RX_END comes from the loop, as for any relay's end.
		r.srcHup = true
		if !c.rxPaused {
			t.queueRx(c)
		}
	case !c.rxPaused && c.interest&evlib.Readable == 0:
		t.setInterest(c, c.interest|evlib.Readable)
	}
	return nil
}

// endRelays ends the relays c takes part in, as it closes.
func (t *Thread) endRelays(c *Conn) {
	if r := c.relayOut; r != nil {
		t.endRelay(r, relaySrcGone)
	}
	if r := c.relayIn; r != nil {
		t.endRelay(r, relayDstGone)
	}
}

// endRelay ends r: both connections are free of it, and its pipe is closed
// at the end of the batch, as connections' fds are.
func (t *Thread) endRelay(r *relay, how relayEnd) {
	if !r.live() {
		return
	}
	c, dst := r.src, r.dst
	c.relayOut, dst.relayIn = nil, nil
	if r.pipe.r >= 0 {
		if r.held > 0 {
			t.closePipe(r.pipe) // what it holds is dropped with it
		} else {
			t.putPipe(r.pipe)
		}
		r.pipe = noPipe
	}
	r.buf, r.held = nil, 0
	if t.dying() {
		return // everything closes with ErrDestroyed
	}
	switch how {
	case relayDone:
		if c.state == stateOpen {
			t.hangup(c, io.EOF) // RAW_RX_END (AllowHalfOpen) or close, as always
		}
	case relayDstGone:
		if c.state == stateOpen {
			c.rxPaused = true // the application decides (see RelayTo)
		}
	}
	// dst's peer may have ended meanwhile. A dst that is the one closing
	// is marked so already (closed, closeReq or draining), and settles
	// nothing: nothing but RAW_CLOSE follows its Close or Abort.
	t.settleHup(dst)
}

// relayReadable handles readiness of a relay's source.
func (t *Thread) relayReadable(r *relay, ev evlib.Events) {
	c := r.src
	if !c.rxPaused && r.held == 0 {
		t.relayPull(r)
		return
	}
	// Paused, or holding bytes dst has not taken: no input is taken now.
	if ev&(evlib.Hangup|evlib.Error) != 0 {
		// An error closes c now, as a read would. Otherwise the next
		// pull, when the relay takes input again, reads how the stream
		// ended (srcHup: also after a resume, through forced service,
		// as a backend that reads for the core reports an end once).
		// The core's own fds report a hang-up whatever the interest, so
		// meanwhile c waits out of the poll set, lest it keep the loop
		// awake (setInterest watches it again), unless it is a target
		// waiting for writability, whose write shows what became of it.
		if e, _ := sockErr(c.fd); e != 0 {
			t.closeConn(c, &OpError{Op: "read", Err: e})
			return
		}
		r.srcHup = true
		if t.io == nil && (c.relayIn == nil || !c.writeBlocked) {
			t.park(c)
			return
		}
	}
	if c.interest&evlib.Readable != 0 {
		// Lazily, as for a paused connection: only once input came.
		t.setInterest(c, c.interest&^evlib.Readable)
	}
}

// relayResume is RxFlowControl(true) for a relay's source.
func (t *Thread) relayResume(r *relay) {
	c := r.src
	switch {
	case r.held > 0:
		// It takes more once that was sent (relayWritable).
	case r.srcHup:
		t.queueRx(c) // forced service pulls (deliverBuffered)
	case c.interest&evlib.Readable == 0:
		t.setInterest(c, c.interest|evlib.Readable)
	}
}

// relayPull takes what the source has, up to the relay's size, while the
// relay holds nothing, and passes it on at once.
func (t *Thread) relayPull(r *relay) {
	c := r.src
	if c.hup {
		// A source whose input had ended when RelayTo was called (see
		// there): nothing to read, its kept input was passed on.
		t.endRelay(r, relayDone)
		return
	}
	var n int
	var err error
	if r.splice && r.pipe.r < 0 {
		r.pipe = t.takePipe()
	}
	if r.pipe.r >= 0 {
		t.ctr.Splices.Add(1)
		n, err = sys.Splice(c.fd, r.pipe.w, r.pipe.size)
		if n <= 0 {
			t.putPipe(r.pipe) // empty
			r.pipe = noPipe
		}
	} else {
		if r.buf == nil {
			r.buf = make([]byte, relayBufSize)
		}
		r.off = 0
		n, err = t.read(c.fd, r.buf)
	}
	switch {
	case n > 0:
		t.touch(c)
		r.held = n
		t.relayPush(r, false)
		if r.live() && r.held == 0 && c.state == stateOpen && !c.rxPaused && c.interest&evlib.Readable == 0 {
			// All passed on, and read interest was dropped while the
			// target was blocked: the source is watched again (once per
			// stretch of a blocked target, not per read).
			t.setInterest(c, c.interest|evlib.Readable)
		}
	case err == nil:
		t.endRelay(r, relayDone)
	case wouldBlock(err):
		if !c.rxPaused && c.interest&evlib.Readable == 0 {
			t.setInterest(c, c.interest|evlib.Readable)
		}
	default:
		t.closeConn(c, &OpError{Op: "read", Err: err}) // ends the relay
	}
}

// relayPush sends what the relay holds to its target, after the output
// the core held for it. evented: dst was reported writable; otherwise a
// target known to be blocked is not tried.
func (t *Thread) relayPush(r *relay, evented bool) {
	dst := r.dst
	if dst.writeBlocked && !evented {
		return
	}
	if len(dst.out) > 0 && !t.flush(dst) {
		if dst.state == stateOpen && r.live() {
			t.waitWritable(dst)
		}
		return
	}
	if r.held > 0 {
		var n int
		var err error
		if r.pipe.r >= 0 {
			t.ctr.Splices.Add(1)
			n, err = sys.Splice(r.pipe.r, dst.fd, r.held)
		} else {
			n, err = t.write(dst.fd, r.buf[r.off:r.off+r.held])
		}
		if n > 0 {
			r.held -= n
			r.off += n
			t.touch(dst)
			t.ctr.Relayed.Add(uint64(n))
		}
		if r.pipe.r >= 0 && r.held > 0 && err == nil {
			dst.cutShort = true // see endOfStream
		}
		switch {
		case r.held == 0:
			if r.pipe.r >= 0 {
				t.putPipe(r.pipe) // empty again: lent for the next burst
				r.pipe = noPipe
			}
		case err == nil || wouldBlock(err):
			// A socket that takes part has no room for the rest: as
			// for a partial Write, wait for writability.
			t.waitWritable(dst)
			return
		default:
			t.closeConn(dst, &OpError{Op: "write", Err: err}) // ends the relay, pausing src
			return
		}
	}
	dst.writeBlocked = false
}

// relayWritable handles writability of a relay's target.
func (t *Thread) relayWritable(r *relay) {
	dst := r.dst
	if len(dst.out) == 0 && r.held == 0 {
		// Write interest stayed armed after the last send, in case the
		// source had more at once; it had not: drop it now (lazily, so
		// that a stream whose target keeps filling up does not pay an
		// interest change per send).
		dst.writeBlocked = false
		if dst.interest&evlib.Writable != 0 {
			t.setInterest(dst, dst.interest&^evlib.Writable)
		}
		return
	}
	t.relayPush(r, true)
	if !r.live() || r.held > 0 || dst.writeBlocked {
		return
	}
	// All sent: take more from the source at once, without waiting for
	// its readability (whose interest may have been dropped meanwhile).
	if c := r.src; c.state == stateOpen && !c.closeReq && !c.rxPaused {
		t.relayPull(r)
	}
}

// takePipe lends a relay an empty pipe: a kept one, or a new one if the
// thread has room for its two fds below its limit; noPipe otherwise.
func (t *Thread) takePipe() relayPipe {
	if n := len(t.pipes); n > 0 {
		p := t.pipes[n-1]
		t.pipes = t.pipes[:n-1]
		return p
	}
	if !t.reserve() {
		return noPipe
	}
	if !t.reserve() {
		t.giveBack(true)
		return noPipe
	}
	pr, pw, size, err := sys.NewRelayPipe(relayPipeSize)
	if err != nil {
		t.giveBack(true)
		t.giveBack(true)
		return noPipe
	}
	t.ctx.fds.add(pr)
	t.ctx.fds.add(pw)
	return relayPipe{pr, pw, size}
}

// putPipe takes an empty pipe back, to keep or to close.
func (t *Thread) putPipe(p relayPipe) {
	if len(t.pipes) < maxIdlePipes && !t.dying() {
		t.pipes = append(t.pipes, p)
		return
	}
	t.closePipe(p)
}

// closePipe closes a pipe at the end of the batch, as connections' fds
// are, and gives its room back.
func (t *Thread) closePipe(p relayPipe) {
	t.fdClose = append(t.fdClose, p.r, p.w)
	t.giveBack(true)
	t.giveBack(true)
}

// dropPipes closes the pipes the thread keeps, as it goes down.
func (t *Thread) dropPipes() {
	for _, p := range t.pipes {
		t.closePipe(p)
	}
	t.pipes = nil
}
