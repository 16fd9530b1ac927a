//go:build unix

package core

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

type connState uint8

const (
	stateOpen connState = iota
	stateClosed
	stateConnecting // a client connection not established yet
	stateHandover   // handed to its thread, which has not adopted it yet
)

// Conn is a connection or other descriptor the core services (lws' wsi).
// Its methods are loop-only: call them from a callback, or from a goroutine
// that holds the thread because nobody is servicing it. From anywhere else
// those that return an error return ErrWrongGoroutine (ErrDestroyed once
// Destroy was called) and do nothing; the accessors that return none
// (User, SetUser, Closed and the like) check nothing, and must not be
// called from anywhere else at all.
type Conn struct {
	t        *Thread
	fd       int
	kind     evlib.Kind
	proto    *Protocol
	user     any
	listener *Listener // set for listening sockets
	state    connState

	interest       evlib.Events // what the backend watches, or will once interestDue is applied
	interestDue    bool         // interest changed inside a poll-fd change: see Thread.setInterest
	dueWatched     bool         // while interestDue: the backend still watches it (not parked),
	dueFrom        evlib.Events // for this
	wantWritable   bool         // CallbackOnWritable pending
	writeBlocked   bool         // the last write met EAGAIN
	inWritableList bool
	wrote          bool // Write used in the current WRITEABLE
	family         int  // a datagram socket's address family, once WriteTo asked (0: not yet)
	out            []byte

	rxPaused bool
	inRxList bool
	rxbuf    []byte
	hup      bool // the stream ended; close once rxbuf is consumed
	hupErr   error
	parked   bool // out of the backend, nothing to wait for (see Thread.park)
	accepted bool // accepted by a listener and not watched yet: connected and unread (evlib.AcceptedAdder)

	closeReq bool
	closeErr error
	draining bool          // Close waits for output to drain (and the peer, if graceful)
	peerDone bool          // draining, the peer's end of stream was read
	shutWR   bool          // the write side is shut down
	cutShort bool          // a splice into it stopped short, which may have taken a reset's error (see Thread.endOfStream)
	wrClosed bool          // CloseWrite was called: nothing more may be written
	rxEnded  bool          // RAW_RX_END was delivered (AllowHalfOpen)
	wrFirst  bool          // CloseWrite came before RAW_RX_END: the close says io.EOF
	endQuiet bool          // half open, a Hangup or Error said nothing new (see Thread.halfOpenEnd)
	peerIP   netip.Addr    // counted in the thread's per-IP table
	dial     *dialState    // a client connection being established
	pending  *adoptOptions // a handed-over connection's options, until adopted
	relayOut *relay        // the relay taking this connection's input (RelayTo)
	relayIn  *relay        // the relay writing this connection's output

	fdClosed atomic.Bool // fd was closed: FD says -1 (read off the loop too)

	timer, timeout, idle *Timer
	bound                *Timer // CloseTimeout, closing or after the peer's end (see setBound)
	lastActive           int64
	prev, next           *Conn
}

// FD returns the connection's file descriptor, or -1 once the core closed
// it: the descriptor is still open during RAW_CLOSE and is closed when the
// pass that delivered RAW_CLOSE ends (in a loop the application owns: when
// the events of its wait are over, at Service(0) or ServiceAdjustTimeout),
// after which its number may belong to another file. A client connection
// still connecting reports the socket of its oldest connect in flight (-1
// between attempts): racing may promote another of its sockets, so the
// number is only final from RAW_ADOPT on. It does not check the goroutine:
// off the loop its answer may be out of date by the time it is used.
func (c *Conn) FD() int {
	if c.fdClosed.Load() {
		return -1
	}
	return c.fd
}

// Thread returns the service thread that owns the connection. A
// connection never moves, so any goroutine may call it.
func (c *Conn) Thread() *Thread { return c.t }

// Protocol returns the protocol bound to the connection.
func (c *Conn) Protocol() *Protocol { return c.proto }

// User returns what SetUser stored (lws' per-session data).
func (c *Conn) User() any { return c.user }

// SetUser stores application data with the connection.
func (c *Conn) SetUser(v any) { c.user = v }

// Closed reports whether the connection is closed (or a client connection
// failed).
func (c *Conn) Closed() bool { return c.state == stateClosed }

// Connecting reports whether a client connection is still being
// established.
func (c *Conn) Connecting() bool { return c.state == stateConnecting }

// CallbackOnWritable asks for one RAW_WRITEABLE callback when the connection
// can be written (lws_callback_on_writable). Asking again before it came
// changes nothing; asking inside RAW_WRITEABLE asks for the next one. A
// connection not known to be blocked is granted without a system call.
//
// It works after the peer ended its stream (its FIN, a half-close): the
// peer may still be reading, and the application may answer the input it
// was delivered. Without Protocol.AllowHalfOpen such a connection closes
// with io.EOF once nothing is left — no input to deliver, no WRITEABLE
// asked for, no output the core holds — or at Info.CloseTimeout; with it,
// the connection stays open after RAW_RX_END until the application closes
// it (or its idle timeout or SetTimeout does). After a reset, or once the
// connection is closing, it returns ErrClosed; after CloseWrite,
// ErrWriteClosed; on a client connection not established yet, an error
// wrapping ErrInvalid (ask from RAW_ADOPT on).
func (c *Conn) CallbackOnWritable() error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if err := c.outputAllowed(); err != nil {
		return err
	}
	if c.wantWritable {
		return nil
	}
	c.wantWritable = true
	if c.writeBlocked || c.interest&evlib.Writable != 0 {
		if c.interest&evlib.Writable == 0 {
			t.setInterest(c, c.interest|evlib.Writable)
		}
		return nil
	}
	if !c.inWritableList {
		c.inWritableList = true
		t.writable = append(t.writable, c)
	}
	return nil
}

// writeAllowed enforces lws' rule: one write, inside this connection's
// RAW_WRITEABLE, while it is open.
// gone reports whether c takes no more output from the application: it is
// closed or closing, or its peer reset it (an orderly end still lets it
// answer).
func (c *Conn) gone() bool {
	return c.state != stateOpen || c.closeReq || c.draining || c.hup && !errors.Is(c.hupErr, io.EOF)
}

// notOpen says why a call that needs an established connection (rx flow
// control, its timer, its timeout) cannot act on c: a client still
// connecting is not closed, and answers as its output calls do.
func (c *Conn) notOpen() error {
	if c.state == stateConnecting && !c.closeReq {
		return fmt.Errorf("%w: a connection not established yet (from RAW_ADOPT on)", ErrInvalid)
	}
	return ErrClosed
}

// outputAllowed says why the application may not send on c, if it may not:
// Write, CallbackOnWritable and RelayTo's target answer alike.
func (c *Conn) outputAllowed() error {
	switch {
	case !c.closeReq && (c.state == stateConnecting || c.state == stateHandover):
		return fmt.Errorf("%w: output on a connection not established yet (from RAW_ADOPT on)", ErrInvalid)
	case c.gone():
		return ErrClosed
	case c.wrClosed:
		return ErrWriteClosed
	case c.relayIn != nil:
		return ErrRelaying
	}
	return nil
}

func (c *Conn) writeAllowed() error {
	if err := c.outputAllowed(); err != nil {
		return err
	}
	if c.t.writing != c || c.wrote {
		return ErrNotWritable
	}
	return nil
}

// Write sends p. It is allowed once per RAW_WRITEABLE callback of this
// connection and returns ErrNotWritable anywhere else. What the kernel does
// not take is kept by the core and sent before the next RAW_WRITEABLE, so a
// successful Write accepts all of p and returns len(p). A write error closes
// the connection when the callback returns. It returns ErrClosed once the
// connection is closed or closing or its peer reset it, ErrWriteClosed
// after CloseWrite, ErrRelaying on a relay's target, and ErrInvalid on a
// client connection not established yet, as CallbackOnWritable does. On a
// datagram socket Write sends one datagram to its peer; one with no peer
// (ListenUDP's) is an error wrapping ErrInvalid that sends nothing and
// leaves the socket open: WriteTo addresses its datagrams.
func (c *Conn) Write(p []byte) (int, error) {
	t := c.t
	took, err := t.own()
	if err != nil {
		return 0, err
	}
	defer t.release(took)
	if err := c.writeAllowed(); err != nil {
		return 0, err
	}
	c.wrote = true
	if len(p) == 0 {
		return 0, nil
	}
	n, err := t.write(c.fd, p)
	if n > 0 {
		t.touch(c) // part of it is activity too: the peer is reading
	}
	if n == len(p) {
		return n, nil
	}
	if err != nil && !wouldBlock(err) {
		werr := &OpError{Op: "write", Err: err}
		if c.kind == evlib.KindDatagram && errors.Is(err, unix.EDESTADDRREQ) {
			// A datagram socket with no peer: the call's mistake, not
			// the socket's failure (a UDP server's only socket). Nothing
			// was sent, so the callback may still WriteTo.
			c.wrote = false
			return 0, fmt.Errorf("%w: Write on a datagram socket with no peer, use WriteTo: %w", ErrInvalid, werr)
		}
		t.requestClose(c, werr)
		return max(n, 0), werr
	}
	n = max(n, 0)
	c.out = append(c.out[:0], p[n:]...)
	t.waitWritable(c)
	return len(p), nil
}

// Buffered returns how many bytes of earlier writes the core still holds.
func (c *Conn) Buffered() int { return len(c.out) }

// RxFlowControl stops (false) or resumes (true) RAW_RX callbacks
// (lws_rx_flow_control). Stopping takes effect before the next RAW_RX, even
// inside one. Input already read is kept and, on resume, delivered first and
// in order, without waiting for a new network event. Read interest is
// dropped only if input arrives while stopped, so a short pause costs no
// system call; then unread input stays in the kernel and the peer is pushed
// back on (where the backend declares evlib.CapRxBackpressure). It returns
// ErrClosed once the connection is closed, and an error wrapping ErrInvalid
// on a client connection not established yet (from RAW_ADOPT on).
func (c *Conn) RxFlowControl(enable bool) error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if c.state != stateOpen {
		return c.notOpen()
	}
	c.rxPaused = !enable
	if !enable {
		return nil
	}
	if r := c.relayOut; r != nil {
		t.relayResume(r)
		return nil
	}
	if len(c.rxbuf) > 0 || c.hup && !c.rxEnded && c.halfOpen() {
		t.queueRx(c) // kept input, then RAW_RX_END (deliverBuffered)
	}
	if !c.hup && c.interest&evlib.Readable == 0 {
		t.setInterest(c, c.interest|evlib.Readable)
	}
	return nil
}

// RxPaused reports whether rx flow control stopped the connection.
func (c *Conn) RxPaused() bool { return c.rxPaused }

// Close closes the connection once what it wrote has left: at once (inside
// a callback, once the callback returns) when nothing is pending, otherwise
// after the core has sent the rest, bounded by Info.CloseTimeout. With
// Info.GracefulClose it then shuts the write side down and waits, within
// the same bound, for the peer to close its side. Meanwhile nothing more is
// delivered but RAW_CLOSE, which follows with a nil Err (ErrTimeout when the
// bound ran out). Returning an error from a callback, by contrast, closes at
// once and drops what is pending (lws' return -1). A client connection not
// established yet is aborted with CLIENT_CONNECTION_ERROR (Event.Err
// ErrClosed), when RAW_CLOSE would come: at once, inside a callback once
// it returns, from a poll-fd callback once the core's step that made the
// change is done (see ReasonLockPoll); a second Close or Abort before then
// returns ErrClosed. A connection handed over to
// its thread but not adopted yet is dropped with no callback; neither
// gets RAW_CLOSE. From the Close on, CallbackOnWritable and Write return
// ErrClosed. Close returns ErrClosed, changing nothing, once the connection
// is closed or closing: after an earlier Close or Abort, and when the core
// already asked for its close in the current step (its peer's end, found
// in a poll-fd callback's step), whose RAW_CLOSE keeps that reason.
func (c *Conn) Close() error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if c.state == stateConnecting || c.state == stateHandover {
		// Abort: a client connection gets CLIENT_CONNECTION_ERROR, an
		// adoption not made yet nothing; neither gets RAW_CLOSE.
		return t.giveUp(c)
	}
	if c.state != stateOpen || c.draining || c.closeReq {
		// Closed, or closing for a reason of its own (the peer's end
		// found in this step): that reason stands, not Close's nil.
		return ErrClosed
	}
	if len(c.out) == 0 && !(t.ctx.info.GracefulClose && c.kind == evlib.KindStream) {
		t.requestClose(c, nil)
		return nil
	}
	t.beginClose(c)
	return nil
}

// CloseWrite ends the connection's output and goes on reading, as
// net.TCPConn.CloseWrite does: once the output the core holds for it has
// left, the write side is shut down (shutdown(2) with SHUT_WR), so the peer
// reads every byte written before, then end of stream, while its input
// still comes in RAW_RX. A request ends so (an RPC, "nc -N"), and a proxy
// passes on the end of one side's stream to the other. A RAW_WRITEABLE
// asked for and not delivered yet is dropped; from here on Write,
// CallbackOnWritable and CloseWrite return ErrWriteClosed.
//
// When the peer then ends its stream, the connection closes once all its
// input was delivered, with io.EOF (with Protocol.AllowHalfOpen, after
// RAW_RX_END). With AllowHalfOpen, CloseWrite after RAW_RX_END, both sides
// being done, closes the connection once its output has left, RAW_CLOSE
// with a nil Err. Close after CloseWrite works as always. If the shutdown
// fails, the connection closes with that error (returned too, when the
// shutdown was made at once).
//
// It returns an error wrapping ErrInvalid for what is not a connected
// stream socket (a file, a pipe or tty adopted with AdoptFD, a datagram
// socket, a listener) and for a client connection not established yet (call it from RAW_ADOPT on), and ErrClosed
// once the connection is closed or closing, or was reset.
func (c *Conn) CloseWrite() error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	switch {
	case c.state == stateConnecting || c.state == stateHandover:
		return fmt.Errorf("%w: CloseWrite of a connection not established yet", ErrInvalid)
	case c.gone():
		return ErrClosed
	case c.kind != evlib.KindStream:
		return fmt.Errorf("%w: CloseWrite of a %s, which has no write side of its own to shut down", ErrInvalid, kindName(c.kind))
	case c.wrClosed:
		return ErrWriteClosed
	case c.relayIn != nil:
		return ErrRelaying
	}
	var st unix.Stat_t
	if err := unix.Fstat(c.fd, &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		// AdoptFD serves a pipe or a tty as a stream too.
		return fmt.Errorf("%w: CloseWrite of fd %d, which is no socket: only a socket's write side shuts down alone", ErrInvalid, c.fd)
	}
	c.wrClosed, c.wantWritable = true, false
	if len(c.out) == 0 {
		// Else onWritable shuts it down once the rest has left.
		if err := t.shutWrite(c); err != nil {
			return err
		}
	}
	t.settleHup(c)
	return nil
}

// halfOpen reports whether the peer's orderly end leaves the connection
// open (Protocol.AllowHalfOpen).
func (c *Conn) halfOpen() bool {
	return c.proto.AllowHalfOpen && c.kind == evlib.KindStream && errors.Is(c.hupErr, io.EOF)
}

func kindName(k evlib.Kind) string {
	switch k {
	case evlib.KindListener:
		return "listener"
	case evlib.KindDatagram:
		return "datagram socket"
	case evlib.KindFile:
		return "file"
	}
	return "stream"
}

// Abort closes the connection at once, dropping the input and output the
// core holds for it, where Close would send the output first: a stream
// socket is reset (SO_LINGER 0), so that its peer reads an error
// (ECONNRESET) instead of an end of stream that would pass a cut-off
// stream for a whole one. A proxy aborts one side when the other broke.
// RAW_CLOSE follows with ErrAborted, right after the callback that called
// Abort returns (at once outside callbacks; from a poll-fd callback, once
// the core's step that made the change is done, as for Close: see
// ReasonLockPoll). Any connection of the thread
// may be aborted from any of its callbacks, also one that is draining
// after Close. A client connection still connecting is abandoned as Close
// does (CLIENT_CONNECTION_ERROR). It returns ErrClosed once the connection
// is closed, and after a Close that had nothing left to send (not
// draining: its RAW_CLOSE, with the Close's nil Err, comes when the
// callback returns, and the peer reads an orderly end).
func (c *Conn) Abort() error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if c.state == stateConnecting || c.state == stateHandover {
		return t.giveUp(c)
	}
	if c.state != stateOpen || c.closeReq {
		return ErrClosed
	}
	if c.kind == evlib.KindStream {
		// Not a socket (a pipe served as a stream): nothing to reset,
		// and closing it is all an abort can do.
		_ = unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
	}
	c.out, c.rxbuf, c.wantWritable = nil, nil, false
	t.requestClose(c, ErrAborted)
	return nil
}

// giveUp is Close and Abort of a connection not established yet: a client
// connection gets CLIENT_CONNECTION_ERROR with ErrClosed, at once, or, asked
// for inside a callback, once that callback returned (in a poll-fd
// callback, once the core's step that made the change is done, see
// ReasonLockPoll), as RAW_CLOSE does; a handed-over one is dropped.
func (t *Thread) giveUp(c *Conn) error {
	switch {
	case c.closeReq:
		return ErrClosed // given up already, not done yet
	case c.state == stateConnecting && t.depth > 0:
		// Inside a callback, as a close is: failed at once,
		// CLIENT_CONNECTION_ERROR would come nested in it, and inside a
		// poll-fd callback the step whose change is being reported would
		// go on connecting it.
		c.closeReq, c.closeErr = true, ErrClosed
		t.closeReq = append(t.closeReq, c)
		return nil
	}
	t.dropHandoff(c, ErrClosed)
	return nil
}

// Draining reports whether Close is waiting for pending output (or, with
// GracefulClose, for the peer) before the connection closes.
func (c *Conn) Draining() bool { return c.draining }

// SetTimer schedules a TIMER callback after d (lws_set_timer_usecs),
// replacing an earlier one. It returns ErrClosed once the connection is
// closed, and an error wrapping ErrInvalid on a client connection not
// established yet (set it from RAW_ADOPT on). A TIMER due while the
// connection closes is dropped: nothing but RAW_CLOSE follows Close.
func (c *Conn) SetTimer(d time.Duration) error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if c.state != stateOpen {
		return c.notOpen()
	}
	if c.timer == nil {
		c.timer = &Timer{t: t, idx: -1, fn: func() {
			if c.draining || c.closeReq {
				return // closing: nothing but RAW_CLOSE from now on
			}
			if err := t.callback(Event{Reason: ReasonTimer, Conn: c}); err != nil {
				t.closeConn(c, err)
			}
		}}
	}
	t.timers.schedule(c.timer, deadline(t.clock(), d))
	return nil
}

// CancelTimer cancels the pending TIMER callback, if any.
func (c *Conn) CancelTimer() error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if c.timer != nil {
		t.timers.remove(c.timer)
	}
	return nil
}

// SetTimeout closes the connection with ErrTimeout after d unless it is
// called again first (lws_set_timeout). d == 0 cancels the timeout. It is
// the application's own: it never lifts or stretches Info.CloseTimeout's
// bound on a closing connection or one whose peer ended, and Close cancels
// it (a timeout set after Close applies to the close). A negative d is
// ErrInvalid; so is a client connection not established yet
// (Info.ConnectTimeout bounds that; set it from RAW_ADOPT on), and a closed
// one is ErrClosed.
func (c *Conn) SetTimeout(d time.Duration) error {
	t := c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if c.state != stateOpen {
		return c.notOpen()
	}
	if d < 0 {
		return ErrInvalid
	}
	c.setTimeoutErr(d, ErrTimeout)
	return nil
}

// setBound bounds by Info.CloseTimeout, from now, how long a closing
// connection, or one whose peer ended, may take to finish; then it closes
// with why. It is a timer apart from SetTimeout's, so that the
// application's own timeout, which it may move or cancel for its reasons
// at any time, can neither lift nor stretch the bound.
func (c *Conn) setBound(why error) {
	t := c.t
	if c.bound == nil {
		c.bound = &Timer{t: t, idx: -1}
	}
	c.bound.fn = func() { t.closeConn(c, why) }
	t.timers.schedule(c.bound, deadline(t.clock(), t.ctx.info.CloseTimeout))
}

func (c *Conn) setTimeoutErr(d time.Duration, why error) {
	t := c.t
	if c.timeout == nil {
		c.timeout = &Timer{t: t, idx: -1}
	}
	if d == 0 {
		t.timers.remove(c.timeout)
		return
	}
	c.timeout.fn = func() { t.closeConn(c, why) }
	t.timers.schedule(c.timeout, deadline(t.clock(), d))
}
