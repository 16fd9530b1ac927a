//go:build linux

package main

// The bare loop plugloop's abstraction cost is measured against: one epoll
// instance, level-triggered, one read per readable connection and the echo
// written straight back, in x/sys calls only. What the kernel does not take
// is kept and sent on EPOLLOUT, with reading stopped meanwhile, so it stays
// correct (and bounded) under streaming and slow readers.

import (
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

const rawAvailable = ""

// rawConn is a connection's unsent echo.
type rawConn struct{ pending []byte }

func startRawEpoll() (string, error) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(lfd)
		return "", err
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		unix.Close(lfd)
		return "", err
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		unix.Close(lfd)
		return "", err
	}
	sa4 := sa.(*unix.SockaddrInet4)
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(lfd)
		return "", err
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return "", err
	}
	go rawLoop(epfd, lfd)
	return (&net.TCPAddr{IP: sa4.Addr[:], Port: sa4.Port}).String(), nil
}

func rawLoop(epfd, lfd int) {
	runtime.LockOSThread()
	conns := map[int]*rawConn{}
	events := make([]unix.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	drop := func(fd int) {
		unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, fd, nil)
		unix.Close(fd)
		delete(conns, fd)
	}
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			fmt.Fprintln(os.Stderr, "epoll_wait:", err)
			os.Exit(1)
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == lfd {
				for {
					nfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
					if err != nil {
						break // EAGAIN, or a connection already gone
					}
					unix.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
					unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, nfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(nfd)})
					conns[nfd] = &rawConn{}
				}
				continue
			}
			c := conns[fd]
			if c == nil {
				continue
			}
			if len(c.pending) > 0 {
				if ev.Events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
					continue
				}
				w, err := unix.Write(fd, c.pending)
				if err != nil && err != unix.EAGAIN {
					drop(fd)
					continue
				}
				c.pending = c.pending[max(w, 0):]
				if len(c.pending) == 0 {
					c.pending = nil
					unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)})
				}
				continue
			}
			r, err := unix.Read(fd, buf)
			if r <= 0 {
				if err != unix.EAGAIN {
					drop(fd) // EOF or error
				}
				continue
			}
			w, err := unix.Write(fd, buf[:r])
			if err != nil && err != unix.EAGAIN {
				drop(fd)
				continue
			}
			if w = max(w, 0); w < r {
				c.pending = append([]byte(nil), buf[w:r]...)
				unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)})
			}
		}
	}
}
