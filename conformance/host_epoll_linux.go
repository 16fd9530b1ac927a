package conformance

import (
	"errors"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/evmask"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// EpollHost is an epoll loop the application owns per service thread,
// with plugloop's epoll backend attached to it (core.Info{EventLib:
// "epoll", Foreign: []any{epfd0, epfd1...}}): each loop forwards the
// events of fds it does not know with foreign.PollFromEpoll. Its watch set
// is read from the kernel (/proc/self/fdinfo of the epoll fd).
func EpollHost() Host {
	return Host{Name: "epoll", EventLib: "epoll", New: func(t testing.TB, thread int) HostLoop {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			t.Fatalf("conformance: epoll_create1: %v", err)
		}
		set, err := sys.OpenEpollSet(epfd)
		if err != nil {
			unix.Close(epfd)
			t.Fatalf("conformance: opening the epoll fd's fdinfo: %v", err)
		}
		return &epollLoop{thread: thread, epfd: epfd, set: set, own: map[int]bool{}, evs: make([]unix.EpollEvent, 128)}
	}}
}

type epollLoop struct {
	thread int
	epfd   int
	set    *sys.EpollSet
	own    map[int]bool
	evs    []unix.EpollEvent
}

func (l *epollLoop) Setup(info *core.Info) {
	if n := l.thread + 1; len(info.Foreign) < n {
		info.Foreign = append(info.Foreign, make([]any, n-len(info.Foreign))...)
	}
	info.Foreign[l.thread] = l.epfd
}

func (l *epollLoop) AddOwn(fd int) error {
	l.own[fd] = true
	return unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
}

func (l *epollLoop) Wait(dst []unix.PollFd, timeout time.Duration) ([]unix.PollFd, error) {
	n, err := unix.EpollWait(l.epfd, l.evs, sys.Msec(timeout))
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return dst, nil
		}
		return dst, err
	}
	for _, e := range l.evs[:n] {
		dst = append(dst, foreign.PollFromEpoll(e))
	}
	return dst, nil
}

// Watched reads the registrations of the epoll fd from the kernel.
func (l *epollLoop) Watched() map[int]evlib.Events {
	set, err := l.set.Read()
	if err != nil {
		return map[int]evlib.Events{-1: 0} // cannot tell: fail the comparison
	}
	m := map[int]evlib.Events{}
	for fd, mask := range set {
		if !l.own[fd] {
			m[fd] = evmask.FromEpollInterest(mask)
		}
	}
	return m
}

func (l *epollLoop) Close() error {
	l.set.Close()
	return unix.Close(l.epfd)
}
