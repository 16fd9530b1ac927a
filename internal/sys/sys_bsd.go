//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package sys

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const wakeLen = 1

// cloexec makes descriptors with mk and sets close-on-exec on them before
// a fork can copy them: macOS has no SOCK_CLOEXEC or pipe2, and x/sys has
// accept4 on only some BSDs, so this is what the standard library does
// there too (a fork/exec on another goroutine waits for the lock). The
// descriptors are then made non-blocking; on any error none is left open.
func cloexec(mk func() ([]int, error)) error {
	syscall.ForkLock.RLock()
	fds, err := mk()
	if err == nil {
		for _, fd := range fds {
			unix.CloseOnExec(fd)
		}
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return err
	}
	for _, fd := range fds {
		if err = unix.SetNonblock(fd, true); err != nil {
			break
		}
	}
	if err != nil {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	return err
}

// NewWaker returns a non-blocking, close-on-exec pipe.
func NewWaker() (Waker, error) {
	var p [2]int
	if err := cloexec(func() ([]int, error) { return p[:], unix.Pipe(p[:]) }); err != nil {
		return Waker{-1, -1}, err
	}
	return Waker{p[0], p[1]}, nil
}

// Accept accepts one connection as a non-blocking, close-on-exec fd.
func Accept(fd int) (int, error) {
	var nfd int
	err := cloexec(func() ([]int, error) {
		for {
			var err error
			if nfd, _, err = unix.Accept(fd); err != unix.EINTR {
				return []int{nfd}, err
			}
		}
	})
	if err != nil {
		return -1, err
	}
	return nfd, nil
}

// Socket creates a non-blocking, close-on-exec socket.
func Socket(family, typ, proto int) (int, error) {
	var fd int
	err := cloexec(func() ([]int, error) {
		var err error
		fd, err = unix.Socket(family, typ, proto)
		return []int{fd}, err
	})
	if err != nil {
		return -1, err
	}
	return fd, nil
}

// PollWait is poll(2) for at most timeout (< 0: no limit) in whole
// milliseconds, rounded up (see Msec), so a timer never fires early.
func PollWait(fds []unix.PollFd, timeout time.Duration) (int, error) {
	return unix.Poll(fds, Msec(timeout))
}

// Read is read(2).
func Read(fd int, p []byte) (int, error) { return unix.Read(fd, p) }

// Write is write(2).
func Write(fd int, p []byte) (int, error) { return unix.Write(fd, p) }

// FIONREAD is the ioctl that reports how many bytes are ready to read:
// _IOR('f', 127, int) on every BSD and macOS (x/sys does not export it).
const FIONREAD = 0x4004667f
