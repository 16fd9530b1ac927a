//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll

import "github.com/plugloop/plugloop/evlib"

// Attaches tells how many streams were given to netpoll in this process
// (not counting re-attaches).
func Attaches() int64 { return attaches.Load() }

// Detaches tells how many times a stream was taken out of netpoll's poller
// in this process.
func Detaches() int64 { return detaches.Load() }

// Reattaches tells how many times a stream went back to netpoll.
func Reattaches() int64 { return reattaches.Load() }

// Parks tells how many times a stream's reader parked with input held for
// the core (rx paused, or more than MaxReadAhead ahead).
func Parks() int64 { return parks.Load() }

// BigNodeStreams tells how many streams' reads released netpoll's buffer
// at once, as netpoll held more than a page unread for them.
func BigNodeStreams() int64 { return bigNodeStreams.Load() }

// ReaderStarts tells how many reader goroutines were started in this
// process.
func ReaderStarts() int64 { return readerStarts.Load() }

// IdleReaders tells how many reader goroutines wait for a stream.
func IdleReaders() int64 { return idleReaders.Load() }

// MaxIdleReaders is how many idle readers a backend keeps.
const MaxIdleReaders = maxIdleReaders

// LookAhead makes b look at the fds its helpers wait on, as a loaded
// backend does every lookEvery passes. The caller holds the turn: it is
// b's service thread, outside Poll and Loop.
func LookAhead(b evlib.Backend) { b.(*Backend).lookAhead() }

// Pending tells what b would report for fd now from what it knows itself:
// a helper's post not yet taken in (by Poll) is not part of it.
func Pending(b evlib.Backend, fd int) evlib.Events { return b.(*Backend).lookup(fd).events() }

// TickOn tells whether b's tick is armed (see tick_linux.go).
func TickOn(b evlib.Backend) bool { return b.(*Backend).tick.state.Load() != tickOff }

// TickLook runs what b's tick runs at an expiry, with the turn free
// (waiting: as while b's service thread waits) or held by the caller (as
// during a pass), and reports whether it woke the service thread's wait.
func TickLook(b evlib.Backend, waiting bool) (woke bool) {
	bb := b.(*Backend)
	select {
	case <-bb.kick:
	default:
	}
	if waiting {
		bb.turn.Unlock()
		bb.tickLook()
		bb.turn.Lock()
	} else {
		bb.tickLook()
	}
	select {
	case <-bb.kick:
		return true
	default:
		return false
	}
}
