package evlib_epoll

import (
	"unsafe"

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
