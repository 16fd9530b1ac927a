//go:build unix

// Package sys holds the few system-call wrappers plugloop's core and
// backends share, one file per platform family, so the rest of the code
// stays free of build tags.
package sys

import (
	"errors"

	"golang.org/x/sys/unix"
)

// WouldBlock reports whether err means "try again later".
func WouldBlock(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK)
}

// WritableNow asks the kernel, without waiting, whether fd is writable. An
// error counts as writable: it is for the write (or SO_ERROR) to report.
func WritableNow(fd int) bool { return readyNow(fd, unix.POLLOUT) }

// ReadableNow asks the kernel, without waiting, whether fd has input, an
// end or an error for a read to find.
func ReadableNow(fd int) bool { return readyNow(fd, unix.POLLIN) }

func readyNow(fd int, events int16) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: events}}
	n, err := unix.Poll(p, 0)
	return err != nil || n > 0
}

// Waker is a cross-goroutine wakeup: an eventfd on Linux, a pipe elsewhere.
// R is watched for readability; Signal makes it readable; Drain clears it.
type Waker struct {
	R, W int
}

// Signal makes the waker readable. Safe from any goroutine while open.
func (w Waker) Signal() error {
	var one = [8]byte{1}
	for {
		_, err := unix.Write(w.W, one[:wakeLen])
		switch {
		case err == nil, WouldBlock(err): // a full pipe or counter is still readable
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return err
		}
	}
}

// Drain consumes all pending signals.
func (w Waker) Drain() {
	var buf [64]byte
	for {
		n, err := unix.Read(w.R, buf[:])
		if err != nil && errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n < len(buf) || wakeLen == 8 {
			return
		}
	}
}

// Close closes the waker's fds.
func (w Waker) Close() error {
	err := unix.Close(w.R)
	if w.W != w.R {
		if e := unix.Close(w.W); err == nil {
			err = e
		}
	}
	return err
}

// SetNonblock puts fd in non-blocking, close-on-exec mode. It fails with
// EBADF for a closed fd.
func SetNonblock(fd int) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	unix.CloseOnExec(fd)
	return nil
}

// DupCloexec duplicates fd with close-on-exec set.
func DupCloexec(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// SetReusePort sets SO_REUSEPORT, so several sockets can listen on one
// address and the kernel spreads connections over them.
func SetReusePort(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
}
