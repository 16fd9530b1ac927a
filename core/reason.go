//go:build unix

package core

import "strconv"

// Reason says why a protocol callback is called (lws' LWS_CALLBACK_*).
type Reason uint8

// Callback reasons. Conn-level reasons carry a Conn; thread-level ones
// (EventWaitCancelled, the poll-fd reasons for the wake fd) and
// context-level ones (ProtocolInit, ProtocolDestroy) have a nil Conn.
const (
	// ReasonProtocolInit is delivered once per protocol when the context
	// is created, before any connection exists. An error returned for it
	// fails New.
	ReasonProtocolInit Reason = iota + 1
	// ReasonProtocolDestroy is delivered once per protocol when the
	// context is destroyed, after every connection was closed.
	ReasonProtocolDestroy
	// ReasonRawAdopt: a connection was accepted or adopted. Write is not
	// allowed yet; CallbackOnWritable is.
	ReasonRawAdopt
	// ReasonRawRX: Event.Data holds received bytes, valid only during the
	// callback.
	ReasonRawRX
	// ReasonRawWriteable: the connection may Write once. Comes only after
	// CallbackOnWritable, though an extra one may come at any time.
	ReasonRawWriteable
	// ReasonRawClose: the connection is closed; Event.Err says why. It is
	// delivered exactly once per adopted connection, while its fd is still
	// open (Conn.FD names the same socket or file as at RAW_ADOPT, for a
	// last getsockopt, say); the core closes the fd when the callback
	// returns.
	ReasonRawClose
	// ReasonTimer: the connection's timer (Conn.SetTimer) expired.
	ReasonTimer
	// ReasonEventWaitCancelled: CancelService was called. Delivered to
	// every protocol on the service thread's goroutine.
	ReasonEventWaitCancelled
	// ReasonAddPollFD: start watching Event.Poll.FD for Event.Poll.Events.
	// Delivered to the first protocol, for every fd the core watches,
	// before any event for it can matter.
	ReasonAddPollFD
	// ReasonDelPollFD: stop watching Event.Poll.FD.
	ReasonDelPollFD
	// ReasonChangeModePollFD: the interest of Event.Poll.FD changed from
	// Event.Poll.PrevEvents to Event.Poll.Events.
	ReasonChangeModePollFD
	// ReasonLockPoll and ReasonUnlockPoll bracket every poll-fd change,
	// with Event.Len 1 around adds and deletes and 0 around mode changes.
	// A Conn.Close made in any of the poll-fd reasons takes effect once
	// the core's step that made the change is done (a step: one fd's
	// event, one connection's forced service, one timer, one posted
	// function, one call from outside the loop): a connection closed
	// in its own ADD_POLL_FD still gets RAW_ADOPT, then RAW_CLOSE; a
	// client connection still connecting (in the poll-fd callbacks of its
	// sockets' connects, the one that takes the winner back to reading
	// included) stays Connecting until then, and then gets
	// CLIENT_CONNECTION_ERROR instead of RAW_ADOPT; Abort likewise.
	// A change of interest that a call made there causes
	// (CallbackOnWritable, RxFlowControl, RelayTo) is made, and reported
	// in a bracket of its own, once the change being reported is done:
	// the changes never nest, and each CHANGE_MODE_POLL_FD's
	// Event.Poll.PrevEvents is what the application was told last.
	ReasonLockPoll
	ReasonUnlockPoll
	// ReasonRawAdoptFile, ReasonRawRXFile, ReasonRawWriteableFile and
	// ReasonRawCloseFile are the file-descriptor counterparts of the RAW
	// reasons, for pipes, FIFOs and ttys adopted with Context.AdoptFile.
	// The core does not read a file: RAW_RX_FILE says it is readable, and
	// the callback reads it itself (Event.Data is nil). It does write it:
	// Conn.Write works in RAW_WRITEABLE_FILE as in RAW_WRITEABLE. End of
	// file (a FIFO whose writers are gone) closes it.
	ReasonRawAdoptFile
	ReasonRawRXFile
	ReasonRawWriteableFile
	ReasonRawCloseFile
	// ReasonClientConnectionError: a connection started with
	// Context.Connect failed — resolution, every address refused, or
	// ConnectTimeout — or was given up: Close or Abort while it connected
	// (Event.Err then matches ErrClosed), or the context's destruction
	// (ErrDestroyed). Event.Err says why. It comes once, after the
	// DEL_POLL_FD of every socket added for the connection; nothing is
	// delivered for it after, and Conn.FD says -1. A connection that is
	// established gets RAW_ADOPT instead.
	ReasonClientConnectionError
	// ReasonRawRxEnd: the peer ended its stream in order (its FIN, a
	// half-close) and every byte it sent was delivered in RAW_RX. It is
	// delivered only to a protocol with AllowHalfOpen, exactly once, never
	// while rx is paused (input kept while paused comes first, on resume),
	// so that the application learns the end of the request and may still
	// answer it for as long as it needs: the connection stays open until it
	// calls Close or CloseWrite. If CloseWrite came first, the connection
	// closes when the callback returns (RAW_CLOSE with io.EOF), once its
	// output has left.
	ReasonRawRxEnd
)

var reasonNames = [...]string{
	ReasonProtocolInit:          "PROTOCOL_INIT",
	ReasonProtocolDestroy:       "PROTOCOL_DESTROY",
	ReasonRawAdopt:              "RAW_ADOPT",
	ReasonRawRX:                 "RAW_RX",
	ReasonRawWriteable:          "RAW_WRITEABLE",
	ReasonRawClose:              "RAW_CLOSE",
	ReasonTimer:                 "TIMER",
	ReasonEventWaitCancelled:    "EVENT_WAIT_CANCELLED",
	ReasonAddPollFD:             "ADD_POLL_FD",
	ReasonDelPollFD:             "DEL_POLL_FD",
	ReasonChangeModePollFD:      "CHANGE_MODE_POLL_FD",
	ReasonLockPoll:              "LOCK_POLL",
	ReasonUnlockPoll:            "UNLOCK_POLL",
	ReasonRawAdoptFile:          "RAW_ADOPT_FILE",
	ReasonRawRXFile:             "RAW_RX_FILE",
	ReasonRawWriteableFile:      "RAW_WRITEABLE_FILE",
	ReasonRawCloseFile:          "RAW_CLOSE_FILE",
	ReasonClientConnectionError: "CLIENT_CONNECTION_ERROR",
	ReasonRawRxEnd:              "RAW_RX_END",
}

// String returns the lws-style name, such as "RAW_RX".
func (r Reason) String() string {
	if int(r) < len(reasonNames) && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}
