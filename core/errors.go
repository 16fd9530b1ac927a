//go:build unix

package core

import "errors"

// Sentinel errors, for use with errors.Is.
var (
	// ErrDestroyed: the context is destroyed or being destroyed.
	ErrDestroyed = errors.New("plugloop: context destroyed")
	// ErrWrongGoroutine: a loop-only method was called from a goroutine
	// other than the one servicing the thread (or while another goroutine
	// holds it). On amd64 and arm64, and in race-enabled builds, every
	// such call is caught; elsewhere only one made while the thread is
	// idle or waiting in its backend is, since telling goroutines apart
	// there costs microseconds a call.
	ErrWrongGoroutine = errors.New("plugloop: called from a goroutine that does not own the service thread")
	// ErrInService: Service, ServiceFD or Run was called while the thread
	// is already being serviced (from inside a callback, or while another
	// goroutine's call holds it).
	ErrInService = errors.New("plugloop: service thread is already being serviced")
	// ErrNotWritable: Write outside the connection's RAW_WRITEABLE
	// callback, or a second Write in the same callback.
	ErrNotWritable = errors.New("plugloop: write allowed only once per WRITEABLE callback")
	// ErrClosed: the connection or listener is closed.
	ErrClosed = errors.New("plugloop: closed")
	// ErrBadFD: the descriptor is invalid, closed, or already adopted.
	ErrBadFD = errors.New("plugloop: bad file descriptor")
	// ErrFDLimit: the thread's fd limit is reached.
	ErrFDLimit = errors.New("plugloop: fd limit reached")
	// ErrUnknownProtocol: no protocol has that name.
	ErrUnknownProtocol = errors.New("plugloop: unknown protocol")
	// ErrTimeout is the close reason of a connection whose timeout expired.
	ErrTimeout = errors.New("plugloop: connection timed out")
	// ErrWriteClosed: Conn.CloseWrite shut the connection's write side
	// down, so nothing more can be sent on it; reading goes on. Write,
	// CallbackOnWritable and a second CloseWrite return it, telling a
	// write side the application ended from a closed connection
	// (ErrClosed).
	ErrWriteClosed = errors.New("plugloop: write side closed")
	// ErrAborted is the close reason of a connection the application
	// aborted (Conn.Abort).
	ErrAborted = errors.New("plugloop: connection aborted")
	// ErrRelaying: the connection takes part in a relay that excludes the
	// call (Conn.RelayTo): a relay's target refuses Write,
	// CallbackOnWritable and CloseWrite, as its output belongs to the
	// relay, and RelayTo refuses a source that relays already and a
	// target that is relayed to already.
	ErrRelaying = errors.New("plugloop: connection is relaying")
	// ErrInvalid: an argument is out of range.
	ErrInvalid = errors.New("plugloop: invalid argument")
	// ErrBackend: the backend's wait failed (its Poll or its Loop), so
	// the thread cannot learn of events. Run returns it, wrapping the
	// backend's error, once it stopped the context's other threads;
	// Service returns it after the rest of its pass. The context stays
	// usable: Run or Service may be called again, or Destroy.
	ErrBackend = errors.New("plugloop: backend failed")
)
