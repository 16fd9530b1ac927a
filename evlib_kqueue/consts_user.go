//go:build darwin || dragonfly || freebsd

package evlib_kqueue

import "golang.org/x/sys/unix"

// macOS, FreeBSD and DragonFly have EVFILT_USER: the backend wakes itself
// with it (evlib.CapOwnWaker). They have EV_RECEIPT too.
const (
	haveUser       = true
	sysUserFilter  = unix.EVFILT_USER
	sysNoteTrigger = unix.NOTE_TRIGGER
	sysReceipt     = unix.EV_RECEIPT
)
