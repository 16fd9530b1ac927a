//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package evlib_kqueue

import (
	"fmt"
	"syscall"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

func descriptor() evlib.Descriptor {
	caps := evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapForeignLoop | evlib.CapFiles | evlib.CapUnixReset
	if haveUser {
		caps |= evlib.CapOwnWaker
	}
	return evlib.Descriptor{Caps: caps, New: New}
}

// New creates the backend. With cfg.Foreign set to a kqueue fd (int) it
// registers its fds there instead of in a kqueue of its own, and the
// application's loop hands their events to the core; it then has no waker.
func New(cfg evlib.Config) (evlib.Backend, error) {
	return newBackend(cfg, openKqueue, attachKqueue, haveUser)
}

// wakeIdent identifies the backend's EVFILT_USER event. User events have
// identifiers of their own, apart from fds.
const wakeIdent = 0x706c6c70 // "pllp"

// sysKqueue is a kqueue, with the buffers that convert between kevent and
// unix.Kevent_t, whose fields have different types on different systems.
type sysKqueue struct {
	kq     int
	ch, ev []unix.Kevent_t
	ts     unix.Timespec
	zero   unix.Timespec    // never written: Wake may read it on any goroutine
	trig   [1]unix.Kevent_t // the wakeup, built once, for the same reason
}

func openKqueue() (kernel, error) {
	// Under ForkLock, as the standard library makes its kqueue: a fork on
	// another goroutine must not copy it before close-on-exec is set.
	syscall.ForkLock.RLock()
	kq, err := unix.Kqueue()
	if err == nil {
		unix.CloseOnExec(kq)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("kqueue: %w", err)
	}
	k := &sysKqueue{kq: kq}
	if haveUser {
		var reg [1]unix.Kevent_t
		unix.SetKevent(&reg[0], wakeIdent, sysUserFilter, unix.EV_ADD|unix.EV_CLEAR)
		if _, err := unix.Kevent(kq, reg[:], nil, &k.zero); err != nil {
			unix.Close(kq)
			return nil, fmt.Errorf("kevent EVFILT_USER: %w", err)
		}
		unix.SetKevent(&k.trig[0], wakeIdent, sysUserFilter, 0)
		k.trig[0].Fflags = sysNoteTrigger
	}
	return k, nil
}

// attachKqueue checks that kq is a kqueue (kevent with nothing to do fails
// with EBADF on anything else) and uses it; close will leave it open.
func attachKqueue(kq int) (kernel, error) {
	k := &sysKqueue{kq: kq}
	if _, err := unix.Kevent(kq, nil, nil, &k.zero); err != nil {
		return nil, fmt.Errorf("%w: fd %d is not an open kqueue: %w", evlib.ErrBadFD, kq, err)
	}
	return k, nil
}

func sysFilter(f filter) int {
	switch f {
	case filterRead:
		return unix.EVFILT_READ
	case filterWrite:
		return unix.EVFILT_WRITE
	}
	panic("evlib_kqueue: change for " + f.String())
}

// toSys converts changes into k.ch.
func (k *sysKqueue) toSys(changes []kevent) []unix.Kevent_t {
	if cap(k.ch) < len(changes) {
		k.ch = make([]unix.Kevent_t, len(changes))
	}
	ch := k.ch[:len(changes)]
	for i := range changes {
		c := &changes[i]
		fl := 0
		if c.flags&flagAdd != 0 {
			fl |= unix.EV_ADD
		}
		if c.flags&flagDelete != 0 {
			fl |= unix.EV_DELETE
		}
		ch[i] = unix.Kevent_t{}
		unix.SetKevent(&ch[i], c.ident, sysFilter(c.filter), fl)
	}
	return ch
}

// fromSys converts a result. The explicit conversions cover every
// system's field types: Ident uint32 or uint64, Filter int16 or uint32,
// Flags uint16 or uint32.
func fromSys(r *unix.Kevent_t, k *kevent) {
	*k = kevent{ident: int(r.Ident), fflags: uint32(r.Fflags), data: int64(r.Data)}
	switch f := int(r.Filter); {
	case f == unix.EVFILT_READ:
		k.filter = filterRead
	case f == unix.EVFILT_WRITE:
		k.filter = filterWrite
	case haveUser && f == sysUserFilter:
		k.filter = filterUser
	}
	fl := uint32(r.Flags)
	if fl&unix.EV_ADD != 0 {
		k.flags |= flagAdd
	}
	if fl&unix.EV_DELETE != 0 {
		k.flags |= flagDelete
	}
	if fl&unix.EV_EOF != 0 {
		k.flags |= flagEOF
	}
	if fl&unix.EV_ERROR != 0 {
		k.flags |= flagError
	}
}

func (k *sysKqueue) kevent(changes, events []kevent, wait time.Duration) (int, error) {
	ch := k.toSys(changes)
	if cap(k.ev) < len(events) {
		k.ev = make([]unix.Kevent_t, len(events))
	}
	ev := k.ev[:len(events)]
	var ts *unix.Timespec // nil: no limit
	if wait >= 0 {
		k.ts = unix.NsecToTimespec(int64(wait))
		ts = &k.ts
	}
	n, err := unix.Kevent(k.kq, ch, ev, ts)
	if err != nil {
		return 0, err
	}
	for i := range n {
		fromSys(&ev[i], &events[i])
	}
	return n, nil
}

// apply submits changes to a foreign kqueue without taking its events.
// With EV_RECEIPT every change comes back as a result (EV_ERROR, errno or
// 0 in data), which also stops kevent before it collects events. Without
// it (NetBSD), each change goes alone with no room for results: a failure
// is then the call's error, and with no room kevent collects nothing.
func (k *sysKqueue) apply(changes []kevent, errs []error) (int, error) {
	ch := k.toSys(changes)
	if sysReceipt == 0 {
		for i := range ch {
			if _, err := unix.Kevent(k.kq, ch[i:i+1], nil, &k.zero); err != nil {
				errs[i] = err
			}
		}
		return len(ch), nil
	}
	for i := range ch {
		ch[i].Flags |= sysReceipt
	}
	if cap(k.ev) < len(ch) {
		k.ev = make([]unix.Kevent_t, len(ch))
	}
	ev := k.ev[:len(ch)]
	n, err := unix.Kevent(k.kq, ch, ev, &k.zero)
	if err != nil {
		return 1, err
	}
	for i := range n {
		r := &ev[i]
		if uint32(r.Flags)&unix.EV_ERROR == 0 || r.Data == 0 {
			continue
		}
		for j := range ch {
			if ch[j].Ident == r.Ident && ch[j].Filter == r.Filter {
				errs[j] = unix.Errno(r.Data)
				break
			}
		}
	}
	return 1, nil
}

// trigger fires the user event. The change needs no room for results and
// gets none, so kevent returns without collecting events.
func (k *sysKqueue) trigger() error {
	for {
		_, err := unix.Kevent(k.kq, k.trig[:], nil, &k.zero)
		if err != unix.EINTR {
			return err
		}
	}
}

func (k *sysKqueue) checkFD(fd int) error {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err
}

func (k *sysKqueue) close() error { return unix.Close(k.kq) }
