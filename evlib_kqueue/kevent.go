package evlib_kqueue

import (
	"syscall"

	"github.com/plugloop/plugloop/evlib"
)

// kevent is a struct kevent in a form that does not depend on the operating
// system: the fields of unix.Kevent_t differ in type from one BSD to the
// next (NetBSD's filter is a uint32, FreeBSD/386's ident a uint32...), and
// the constants differ in value (NetBSD's EVFILT_READ is 0, everybody
// else's -1). kqueue_bsd.go converts to and from the real thing; all the
// logic of the backend works on this form and is tested on any system.
type kevent struct {
	ident  int    // the fd, or the user event's identifier
	filter filter // which filter
	flags  flags  // action (changes) or condition (results)
	fflags uint32 // results of filterRead/filterWrite with flagEOF: the socket error, if any
	data   int64  // results with flagError: the errno of the failed change
}

// filter names the kqueue filters the backend uses.
type filter uint8

const (
	filterOther filter = iota // a filter the backend does not use
	filterRead                // EVFILT_READ
	filterWrite               // EVFILT_WRITE
	filterUser                // EVFILT_USER, the backend's own wakeup
)

func (f filter) String() string {
	switch f {
	case filterRead:
		return "EVFILT_READ"
	case filterWrite:
		return "EVFILT_WRITE"
	case filterUser:
		return "EVFILT_USER"
	}
	return "EVFILT_?"
}

// flags are the kevent flags the backend sets or reads.
type flags uint8

const (
	flagAdd    flags = 1 << iota // EV_ADD: register (or modify) a knote; it is enabled
	flagDelete                   // EV_DELETE: remove a knote
	flagEOF                      // EV_EOF: the filter's end of stream (results)
	flagError                    // EV_ERROR: a change failed, errno in data (results)
)

// errno returns the error of a result with flagError.
func (k *kevent) errno() syscall.Errno { return syscall.Errno(k.data) }

// translate converts a result of the read or write filter to evlib events.
// EV_EOF is a hangup; on the read filter it stays Readable too, so that the
// core reads, meets the end of the stream and learns how it ended. With
// EV_EOF the filters put the socket's pending error, if any, in fflags: that
// is an Error. (A failed change, EV_ERROR, is not a readiness result; the
// backend handles those before it translates.)
func translate(k *kevent) evlib.Events {
	var ev evlib.Events
	switch k.filter {
	case filterRead:
		ev = evlib.Readable
	case filterWrite:
		ev = evlib.Writable
	}
	if k.flags&flagEOF != 0 {
		ev |= evlib.Hangup
		if k.fflags != 0 {
			ev |= evlib.Error
		}
	}
	return ev
}
