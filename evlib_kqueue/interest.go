package evlib_kqueue

import "github.com/plugloop/plugloop/evlib"

// Per-fd state bits. want is what the core asked for; have is what the
// kernel holds: the filters with a knote registered (and, since the backend
// never disables one, enabled) for the fd.
const (
	wantR   uint8 = uint8(evlib.Readable) // interest in EVFILT_READ
	wantW   uint8 = uint8(evlib.Writable) // interest in EVFILT_WRITE
	haveR   uint8 = wantR << haveShift    // an EVFILT_READ knote is registered
	haveW   uint8 = wantW << haveShift    // an EVFILT_WRITE knote is registered
	watched uint8 = 1 << 6                // the core added the fd and has not removed it
	dirty   uint8 = 1 << 7                // the fd is in interest.dirty

	wantMask  = wantR | wantW
	haveMask  = haveR | haveW
	haveShift = 2
)

// filters pairs the state bits with the filters, in the order changes for
// one fd are queued.
var filters = [...]struct {
	want uint8
	f    filter
}{{wantR, filterRead}, {wantW, filterWrite}}

func wantBit(f filter) uint8 {
	switch f {
	case filterRead:
		return wantR
	case filterWrite:
		return wantW
	}
	return 0
}

// interest is the backend's bookkeeping of what to watch. The core's calls
// only update it; the changes it implies are computed when they are sent,
// from the difference between want and have of every fd that changed since
// the last send. So changes that cancel out before the next kevent call
// (Modify to W and back to R, an Add and a Remove of the same fd, a Remove
// and an Add of the same number) cost nothing, and an fd never has more
// than one change per filter in a changelist.
//
// Remove, in a kqueue of the backend's own, sends no EV_DELETE: the core
// closes an fd right after it removes it, and close(2) drops the fd's knotes
// from every kqueue. A queued EV_DELETE would then fail with EBADF or ENOENT,
// and a change that fails makes kevent return at once with the failure
// instead of waiting: one wasted system call per batch with a closed
// connection. Instead, if a removed fd stays open and one of its forgotten
// knotes fires, the backend sees an event for a knote it does not have
// (have bit clear), drops it, and deletes that knote in the next kevent
// call (leftover). Level triggering guarantees that such a knote keeps
// firing until it is deleted, so it cannot be missed. An fd number reused
// by a new file is added afresh: Add clears the have bits of the filters it
// wants, so each gets an EV_ADD, which creates the knote (the old one went
// with the close) or updates it (when the same open file was removed and
// added again). So Remove, close, reuse and Add before the next kevent call
// send exactly the EV_ADDs of the new fd, not an EV_DELETE that would fail.
//
// On a foreign kqueue nobody drains leftover events (the application's loop
// would receive them forever), so there Remove keeps the have bits and the
// deletes go out at once.
type interest struct {
	state []uint8 // per fd: want, have, watched, dirty
	dirty []int32 // the fds whose dirty bit is set, in the order it was set
}

func (in *interest) get(fd int) uint8 {
	if fd < 0 || fd >= len(in.state) {
		return 0
	}
	return in.state[fd]
}

func (in *interest) grow(fd int) {
	if fd < len(in.state) {
		return
	}
	st := make([]uint8, max(fd+1, 2*len(in.state), 64))
	copy(st, in.state)
	in.state = st
}

// isWatched reports whether the core added fd and has not removed it.
func (in *interest) isWatched(fd int) bool { return in.get(fd)&watched != 0 }

// registered reports whether the kernel holds a knote for fd and f.
func (in *interest) registered(fd int, f filter) bool {
	return in.get(fd)&(wantBit(f)<<haveShift) != 0
}

// wants reports the interest of a watched fd (0 if not watched).
func (in *interest) wants(fd int) evlib.Events {
	return evlib.Events(in.get(fd) & wantMask)
}

// touch queues fd if its want and have differ.
func (in *interest) touch(fd int) {
	st := in.state[fd]
	if st&dirty == 0 && st&wantMask != (st&haveMask)>>haveShift {
		in.state[fd] = st | dirty
		in.dirty = append(in.dirty, int32(fd))
	}
}

// add starts watching fd, which must not be watched, with interest ev.
// The number may belong to a new file since the backend last saw it, so
// whatever knotes the state remembers for it are not trusted for the
// wanted filters: they get an EV_ADD in any case (which is harmless when
// the knote exists). Remembered knotes that are not wanted are deleted.
func (in *interest) add(fd int, ev evlib.Events) {
	in.grow(fd)
	want := uint8(ev) & wantMask
	in.state[fd] = in.state[fd]&^(wantMask|want<<haveShift) | watched | want
	in.touch(fd)
}

// modify sets the interest of a watched fd.
func (in *interest) modify(fd int, ev evlib.Events) {
	in.state[fd] = in.state[fd]&^wantMask | uint8(ev)&wantMask
	in.touch(fd)
}

// remove stops watching a watched fd. With forget, the knotes the fd has
// are forgotten, to go with its close (or, if it stays open, when they fire
// as leftovers); without, they are deleted with the next changes.
func (in *interest) remove(fd int, forget bool) {
	st := in.state[fd] &^ (watched | wantMask)
	if forget {
		st &^= haveMask
	}
	in.state[fd] = st
	in.touch(fd)
}

// leftover records that the kernel reported f for fd though the backend
// holds no such knote: one that Remove forgot, of an fd that stayed open.
// It is deleted with the next changes unless the fd wants it again.
func (in *interest) leftover(fd int, f filter) {
	if fd < 0 || wantBit(f) == 0 {
		return
	}
	in.grow(fd)
	in.state[fd] |= wantBit(f) << haveShift
	in.touch(fd)
}

// pending reports whether changes are waiting to be sent.
func (in *interest) pending() bool { return len(in.dirty) > 0 }

// changes appends to dst the changes that make the kernel hold what the
// queued fds want: EV_ADD for every wanted filter without a knote, EV_DELETE
// for every knote no longer wanted. It changes nothing: commit records that
// they were sent.
func (in *interest) changes(dst []kevent) []kevent {
	for _, fd32 := range in.dirty {
		fd := int(fd32)
		st := in.state[fd]
		want, have := st&wantMask, (st&haveMask)>>haveShift
		for _, x := range filters {
			switch {
			case want&x.want != 0 && have&x.want == 0:
				dst = append(dst, kevent{ident: fd, filter: x.f, flags: flagAdd})
			case want&x.want == 0 && have&x.want != 0:
				dst = append(dst, kevent{ident: fd, filter: x.f, flags: flagDelete})
			}
		}
	}
	return dst
}

// commit records that the changes were submitted: the kernel now holds what
// the queued fds want. Changes that failed are then reported one by one to
// failed.
func (in *interest) commit() {
	for _, fd32 := range in.dirty {
		fd := int(fd32)
		st := in.state[fd]
		in.state[fd] = st&^(haveMask|dirty) | (st&wantMask)<<haveShift
	}
	in.dirty = in.dirty[:0]
}

// failed records, after commit, that the change for fd and f failed. It
// reports whether that change was an EV_ADD, which leaves the fd without
// the knote it wants. (After commit, have equals want for every fd that had
// a change, so a have bit means the change was the EV_ADD that set it.) A
// failed EV_DELETE leaves no knote either, so it needs no bookkeeping. The
// failed EV_ADD is not retried by itself: the next change of interest of
// the fd tries again.
func (in *interest) failed(fd int, f filter) (wasAdd bool) {
	bit := wantBit(f) << haveShift
	if bit == 0 || in.get(fd)&bit == 0 {
		return false
	}
	in.state[fd] &^= bit
	return true
}
