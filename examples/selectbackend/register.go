package selectbackend

import "github.com/plugloop/plugloop/evlib"

// Name is the name the backend is registered under, for core.Info.EventLib
// and PLUGLOOP_EVLIB.
const Name = "select"

// caps are the capabilities the backend declares; the conformance suite
// checks each. Readiness: the core reads and writes the fds itself, so
// dropping Readable interest leaves the input in the kernel
// (back-pressure), and a unix stream's reset reaches the core's read(2).
// select(2) watches pipes, FIFOs and ttys as it does sockets, and the
// wakeup is the backend's own pipe. No CapHangupWithoutInterest: an fd with
// no interest is in no set, and select(2) reports nothing of it.
const caps = evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapFiles |
	evlib.CapUnixReset | evlib.CapOwnWaker

func init() {
	if err := evlib.Register(evlib.Descriptor{
		Name:        Name,
		Caps:        caps,
		Priority:    -10, // never a program's default: selected by name only
		Unavailable: errUnavailable,
		New:         New,
	}); err != nil {
		panic(err)
	}
}
