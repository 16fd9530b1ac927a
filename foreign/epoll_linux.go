package foreign

import "golang.org/x/sys/unix"

// PollFromEpoll converts an event from the application's epoll instance to
// the pollfd Thread.ServiceFD takes, for hosts that attached plugloop's
// epoll backend to their own epoll fd.
func PollFromEpoll(e unix.EpollEvent) unix.PollFd {
	var r int16
	if e.Events&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP) != 0 {
		r |= unix.POLLIN
	}
	if e.Events&unix.EPOLLOUT != 0 {
		r |= unix.POLLOUT
	}
	if e.Events&unix.EPOLLHUP != 0 {
		r |= unix.POLLHUP
	}
	if e.Events&unix.EPOLLERR != 0 {
		r |= unix.POLLERR
	}
	return unix.PollFd{Fd: e.Fd, Events: r, Revents: r}
}
