package foreign

import (
	"github.com/plugloop/plugloop/internal/evmask"
	"golang.org/x/sys/unix"
)

// PollFromEpoll converts an event from the application's epoll instance to
// the pollfd Thread.ServiceFD takes, for hosts that attached plugloop's
// epoll backend to their own epoll fd.
func PollFromEpoll(e unix.EpollEvent) unix.PollFd {
	r := evmask.ToPoll(evmask.FromEpoll(e.Events))
	return unix.PollFd{Fd: e.Fd, Events: r, Revents: r}
}
