package evmask

import (
	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// EpollInterest is the epoll_event mask for an interest.
func EpollInterest(ev evlib.Events) uint32 {
	var m uint32
	if ev&evlib.Readable != 0 {
		m |= unix.EPOLLIN
	}
	if ev&evlib.Writable != 0 {
		m |= unix.EPOLLOUT
	}
	return m
}

// FromEpollInterest is the interest an epoll_event mask registers:
// EpollInterest's inverse.
func FromEpollInterest(m uint32) evlib.Events {
	var ev evlib.Events
	if m&unix.EPOLLIN != 0 {
		ev |= evlib.Readable
	}
	if m&unix.EPOLLOUT != 0 {
		ev |= evlib.Writable
	}
	return ev
}

// FromEpoll converts an epoll event mask to evlib events. A peer's
// half-close (EPOLLRDHUP) is Readable: end of stream is there to be read.
func FromEpoll(m uint32) evlib.Events {
	var ev evlib.Events
	if m&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP) != 0 {
		ev |= evlib.Readable
	}
	if m&unix.EPOLLOUT != 0 {
		ev |= evlib.Writable
	}
	if m&unix.EPOLLHUP != 0 {
		ev |= evlib.Hangup
	}
	if m&unix.EPOLLERR != 0 {
		ev |= evlib.Error
	}
	return ev
}
