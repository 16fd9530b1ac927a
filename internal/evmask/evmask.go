//go:build unix

// Package evmask converts between evlib's events and the masks of poll(2)
// and epoll(7), for the backends and hosts that speak them.
package evmask

import (
	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// PollInterest is the pollfd Events field for an interest.
func PollInterest(ev evlib.Events) int16 {
	var m int16
	if ev&evlib.Readable != 0 {
		m |= unix.POLLIN
	}
	if ev&evlib.Writable != 0 {
		m |= unix.POLLOUT
	}
	return m
}

// FromPoll converts poll(2) revents to evlib events.
func FromPoll(r int16) evlib.Events {
	var ev evlib.Events
	if r&(unix.POLLIN|unix.POLLPRI) != 0 {
		ev |= evlib.Readable
	}
	if r&unix.POLLOUT != 0 {
		ev |= evlib.Writable
	}
	if r&unix.POLLHUP != 0 {
		ev |= evlib.Hangup
	}
	if r&(unix.POLLERR|unix.POLLNVAL) != 0 {
		ev |= evlib.Error
	}
	return ev
}

// ToPoll converts evlib events to poll(2) revents: what a host hands to
// Thread.ServiceFD for readiness learned some other way.
func ToPoll(ev evlib.Events) int16 {
	r := PollInterest(ev)
	if ev&evlib.Hangup != 0 {
		r |= unix.POLLHUP
	}
	if ev&evlib.Error != 0 {
		r |= unix.POLLERR
	}
	return r
}
