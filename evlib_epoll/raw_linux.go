package evlib_epoll

import (
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// epollWaitNoblock is epoll_wait with a zero timeout. It cannot block, so it
// skips the scheduler hand-off a blocking system call needs.
func epollWaitNoblock(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 8)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// kernelTimespec is the kernel's struct __kernel_timespec, which
// epoll_pwait2 takes on every architecture: unix.Timespec has 32-bit
// fields on 32-bit systems, where the kernel read it as a garbled time and
// every timed wait failed with EINVAL.
type kernelTimespec struct{ sec, nsec int64 }

// noPwait2 is set once epoll_pwait2 (Linux 5.11) turned out missing.
var noPwait2 atomic.Bool

// epollWait waits at most timeout (< 0: no limit). With epoll_pwait2 the
// timeout keeps its nanoseconds, so a timer due in 300 µs is waited for
// 300 µs; epoll_wait counts milliseconds, rounded up (see sys.Msec), and
// is the fallback on older kernels.
func epollWait(epfd int, events []unix.EpollEvent, timeout time.Duration) (int, error) {
	if timeout > 0 && !noPwait2.Load() {
		ts := kernelTimespec{sec: int64(timeout / time.Second), nsec: int64(timeout % time.Second)}
		r, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd),
			uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 8)
		// ENOSYS: an older kernel; EPERM: a seccomp filter that does not
		// know the call (Docker's older default profile).
		if e != unix.ENOSYS && e != unix.EPERM {
			if e != 0 {
				return 0, e
			}
			return int(r), nil
		}
		noPwait2.Store(true)
	}
	return unix.EpollWait(epfd, events, sys.Msec(timeout))
}
