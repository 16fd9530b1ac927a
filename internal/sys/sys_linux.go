package sys

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const wakeLen = 8

// NewWaker returns an eventfd used for both ends.
func NewWaker() (Waker, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return Waker{-1, -1}, err
	}
	return Waker{fd, fd}, nil
}

// Accept accepts one connection as a non-blocking, close-on-exec fd. It
// asks for no address, which saves an allocation per accept.
func Accept(fd int) (int, error) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(r), nil
	}
}

// PollWait is poll(2) for at most timeout (< 0: no limit), kept to the
// nanosecond with ppoll, so a timer due in 300 µs is waited for 300 µs,
// not a whole millisecond.
func PollWait(fds []unix.PollFd, timeout time.Duration) (int, error) {
	if timeout < 0 {
		return unix.Ppoll(fds, nil, nil)
	}
	ts := unix.NsecToTimespec(int64(timeout))
	return unix.Ppoll(fds, &ts, nil)
}

// Socket creates a non-blocking, close-on-exec socket in one call, so no
// fork on another goroutine can copy it first.
func Socket(family, typ, proto int) (int, error) {
	return unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
}

// Read is read(2) on a non-blocking fd. It never blocks, so it skips the
// scheduler hand-off a blocking system call needs.
func Read(fd int, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Write is write(2) on a non-blocking fd, without the scheduler hand-off.
func Write(fd int, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// FIONREAD is the ioctl that reports how many bytes are ready to read.
const FIONREAD = unix.TIOCINQ
