package evlib_kqueue

import "golang.org/x/sys/unix"

// golang.org/x/sys/unix has no EVFILT_USER for OpenBSD (its kqueue lacks it
// before 7.x), so the backend has no waker there and the core watches its
// own pipe. EV_RECEIPT exists.
const (
	haveUser       = false
	sysUserFilter  = -0x7fff // never used: no EVFILT_USER
	sysNoteTrigger = 0
	sysReceipt     = unix.EV_RECEIPT
)
