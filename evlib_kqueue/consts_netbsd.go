package evlib_kqueue

// golang.org/x/sys/unix has neither EVFILT_USER nor EV_RECEIPT for NetBSD
// (its kqueue lacks them before 10.0), so the backend has no waker there
// (the core watches its own pipe), and on a foreign kqueue it submits one
// change per call.
const (
	haveUser       = false
	sysUserFilter  = -0x7fff // never used: no EVFILT_USER (and NetBSD's EVFILT_READ is 0)
	sysNoteTrigger = 0
	sysReceipt     = 0
)
