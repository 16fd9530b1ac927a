//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package selectbackend

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// SetSize is FD_SETSIZE as golang.org/x/sys/unix defines fd_set on this
// system: the backend watches fds 0 to SetSize-1 only.
const SetSize = int(unsafe.Sizeof(unix.FdSet{})) * 8

// maxWait is the longest timeout handed to select(2): macOS and the BSDs
// refuse a timeval of more than 10^8 seconds with EINVAL. A Poll may
// return before its timeout; the core then waits again.
const maxWait = 100_000_000 * time.Second

// errUnavailable is nil: the backend runs on this system.
var errUnavailable error

// backend is one service thread's select(2) loop.
type backend struct {
	sink evlib.Sink
	ctr  *evlib.Counters

	watched unix.FdSet // the fds the core added
	rd, wr  unix.FdSet // their interest (and the wake pipe's read end in rd)
	top     int        // the highest watched fd, -1 when none
	rres    unix.FdSet // what the last select(2) left of rd
	wres    unix.FdSet // and of wr
	batch   []report   // the last select(2)'s ready fds
	pfds    []unix.PollFd
	closed  bool

	wake waker
}

// report is a ready fd and its events.
type report struct {
	fd int
	ev evlib.Events
}

// waker is the backend's own cross-goroutine wakeup: a pipe whose read end
// the backend watches. Wake may be called from any goroutine, also during
// Poll and Close: mu orders it against Close, so a Wake never writes to a
// descriptor number that Close gave back to the system.
type waker struct {
	r, w    int
	pending atomic.Bool // a byte is in the pipe, or is being written
	ctr     *evlib.Counters

	mu     sync.Mutex
	closed bool
}

// New creates the backend for one service thread. It refuses a foreign
// loop: select(2) has no set to attach to.
func New(cfg evlib.Config) (evlib.Backend, error) {
	if cfg.Foreign != nil {
		return nil, fmt.Errorf("%w: the select backend waits on fd_sets of its own", evlib.ErrForeignUnsupported)
	}
	var p [2]int
	if err := wakePipe(&p); err != nil {
		return nil, fmt.Errorf("select: wake pipe: %w", err)
	}
	if p[0] >= SetSize {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, fmt.Errorf("%w: select: the wake pipe's fd %d is beyond FD_SETSIZE (%d): the process holds too many descriptors for select(2)", evlib.ErrBadFD, p[0], SetSize)
	}
	b := &backend{sink: cfg.Sink, ctr: cfg.Counters, top: -1}
	b.wake = waker{r: p[0], w: p[1], ctr: cfg.Counters}
	b.rd.Set(b.wake.r)
	return b, nil
}

// Add implements evlib.Backend. An fd at or above SetSize is an error
// wrapping evlib.ErrBadFD, and nothing changes.
func (b *backend) Add(fd int, _ evlib.Kind, ev evlib.Events) error {
	if b.closed {
		return fmt.Errorf("select: add fd %d: %w", fd, evlib.ErrClosed)
	}
	if fd < 0 || fd > math.MaxInt32 {
		return fmt.Errorf("select: add fd %d: %w", fd, evlib.ErrBadFD)
	}
	if fd >= SetSize {
		return fmt.Errorf("select: add fd %d: %w: select(2) watches fds below FD_SETSIZE (%d) only", fd, evlib.ErrBadFD, SetSize)
	}
	if b.watched.IsSet(fd) {
		return fmt.Errorf("select: add fd %d: %w", fd, evlib.ErrExist)
	}
	// select(2) fails the whole wait with EBADF for one closed fd in its
	// sets, so make sure it is open now.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return fmt.Errorf("select: add fd %d: %w: %v", fd, evlib.ErrBadFD, err)
	}
	b.watched.Set(fd)
	b.top = max(b.top, fd)
	b.interest(fd, ev)
	return nil
}

// interest puts fd into the sets ev asks for and out of the others.
func (b *backend) interest(fd int, ev evlib.Events) {
	if ev&evlib.Readable != 0 {
		b.rd.Set(fd)
	} else {
		b.rd.Clear(fd)
	}
	if ev&evlib.Writable != 0 {
		b.wr.Set(fd)
	} else {
		b.wr.Clear(fd)
	}
}

// Modify implements evlib.Backend. It makes no system call.
func (b *backend) Modify(fd int, ev evlib.Events) error {
	if b.closed {
		return fmt.Errorf("select: modify fd %d: %w", fd, evlib.ErrClosed)
	}
	if fd < 0 || fd >= SetSize || !b.watched.IsSet(fd) {
		return fmt.Errorf("select: modify fd %d: %w", fd, evlib.ErrNotWatched)
	}
	b.interest(fd, ev)
	return nil
}

// Remove implements evlib.Backend. It makes no system call.
func (b *backend) Remove(fd int) error {
	if b.closed || fd < 0 || fd >= SetSize || !b.watched.IsSet(fd) {
		return nil
	}
	b.watched.Clear(fd)
	b.interest(fd, 0)
	if fd == b.top {
		b.top = highest(b.watched.Bits[:], fd)
	}
	return nil
}

// Poll implements evlib.Backend: one select(2) on copies of the interest
// sets, then a report for every watched fd left in them, in fd order.
func (b *backend) Poll(timeout time.Duration) (int, error) {
	if b.closed {
		return 0, fmt.Errorf("select: poll: %w", evlib.ErrClosed)
	}
	var tv *unix.Timeval
	if timeout >= 0 {
		// Round up to select's microseconds: a timeout of 300ns must not
		// become a wait of 0, on which the core would spin until its
		// timer is due.
		d := min(timeout, maxWait)
		t := unix.NsecToTimeval(int64((d + time.Microsecond - 1) / time.Microsecond * time.Microsecond))
		tv = &t
	}
	if timeout != 0 {
		// Counted before the wait blocks: the core learns from it that
		// the loop is idle (see evlib.Counters). Yielding first keeps a
		// loop of raw system calls on good terms with the scheduler (see
		// evlib.Backend's Poll).
		b.ctr.Waits.Add(1)
		runtime.Gosched()
	}
	b.rres, b.wres = b.rd, b.wr
	nfd := max(b.top, b.wake.r) + 1
	n, err := unix.Select(nfd, &b.rres, &b.wres, nil, tv)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return 0, nil // an interrupted wait is an empty one
		}
		return 0, fmt.Errorf("select: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	if b.rres.IsSet(b.wake.r) {
		b.wake.drain()
	}
	b.batch = b.batch[:0]
	each(b.rres.Bits[:], b.wres.Bits[:], nfd, func(fd int, ev evlib.Events) {
		if b.watched.IsSet(fd) { // not the wake pipe
			b.batch = append(b.batch, report{fd, ev})
		}
	})
	if len(b.batch) == 0 {
		return 0, nil
	}
	b.hangups()
	// The sink may add, modify and remove fds while we report: the batch
	// is this wait's own, and an fd removed meanwhile is skipped.
	reported := 0
	for _, r := range b.batch {
		if b.watched.IsSet(r.fd) {
			reported++
			b.sink.Ready(r.fd, r.ev)
		}
	}
	return reported, nil
}

// hangups adds Hangup and Error to the batch's reports where the kernel
// has them. select(2) cannot say them: a hung-up or failed fd is just
// readable (or writable). The core needs them all the same: a paused
// connection whose peer is gone is read to its end only on Hangup, and a
// pipe's end of file comes to the core as Hangup. So one poll(2), which
// cannot block, asks about the fds select(2) reported, for the conditions
// it reports whatever the events asked for (POLLHUP, POLLERR, POLLNVAL).
// It costs one system call per wait that found an fd ready, and nothing
// per fd watched.
func (b *backend) hangups() {
	b.pfds = b.pfds[:0]
	for _, r := range b.batch {
		b.pfds = append(b.pfds, unix.PollFd{Fd: int32(r.fd)})
	}
	for {
		_, err := unix.Poll(b.pfds, 0)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return // select's readiness alone; the next wait asks again
		}
	}
	for i, p := range b.pfds {
		if p.Revents&unix.POLLHUP != 0 {
			b.batch[i].ev |= evlib.Hangup
		}
		if p.Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			b.batch[i].ev |= evlib.Error
		}
	}
}

// Close implements evlib.Backend. It closes the wake pipe only: the fds
// the core added are the core's.
func (b *backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.watched.Zero()
	b.rd.Zero()
	b.wr.Zero()
	b.top = -1
	return b.wake.close()
}

// Wake implements evlib.Waker: it makes the Poll in progress, or the next
// one, return. A wakeup already pending costs nothing more.
func (b *backend) Wake() error { return b.wake.wake() }

func (w *waker) wake() error {
	if !w.pending.CompareAndSwap(false, true) {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.ctr.Wakes.Add(1)
	_, err := unix.Write(w.w, []byte{1})
	if err != nil && err != unix.EAGAIN { // a full pipe is a pending wakeup
		w.pending.Store(false)
		return fmt.Errorf("select: wake: %w", err)
	}
	return nil
}

// drain empties the pipe, then lets the next Wake write again. In that
// order: a Wake between the two finds a wakeup pending, and the Poll
// draining is the one it wanted to end.
func (w *waker) drain() {
	var buf [64]byte
	for {
		if n, err := unix.Read(w.r, buf[:]); n < len(buf) || err != nil {
			break
		}
	}
	w.pending.Store(false)
}

func (w *waker) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return errors.Join(unix.Close(w.r), unix.Close(w.w))
}

// word is an element of unix.FdSet.Bits, whose type depends on the system.
type word interface {
	~int32 | ~uint32 | ~int64 | ~uint64
}

// width returns the number of fds one element of ws holds, and a mask of
// its bits for reading it as a uint64 (a negative int32 would otherwise
// bring 32 set bits with it).
func width[W word](ws []W) (int, uint64) {
	n := int(unsafe.Sizeof(ws[0])) * 8
	return n, ^uint64(0) >> (64 - n)
}

// each calls f, in increasing fd order, for every fd below nfd set in r or
// w, with Readable for r and Writable for w: it skips the empty words.
func each[W word](r, w []W, nfd int, f func(fd int, ev evlib.Events)) {
	n, mask := width(r)
	for i := 0; i*n < nfd; i++ {
		rb, wb := uint64(r[i])&mask, uint64(w[i])&mask
		for both := rb | wb; both != 0; both &= both - 1 {
			bit := uint64(1) << bits.TrailingZeros64(both)
			var ev evlib.Events
			if rb&bit != 0 {
				ev |= evlib.Readable
			}
			if wb&bit != 0 {
				ev |= evlib.Writable
			}
			f(i*n+bits.TrailingZeros64(bit), ev)
		}
	}
}

// highest returns the highest fd below limit set in s, or -1.
func highest[W word](s []W, limit int) int {
	if limit <= 0 {
		return -1
	}
	n, mask := width(s)
	for i := (limit - 1) / n; i >= 0; i-- {
		v := uint64(s[i]) & mask
		if i == (limit-1)/n { // only the bits below limit
			v &= ^uint64(0) >> (63 - (limit-1)%n)
		}
		if v != 0 {
			return i*n + 63 - bits.LeadingZeros64(v)
		}
	}
	return -1
}
