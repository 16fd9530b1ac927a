package evlib_epoll

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/evmask"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{
		Caps: evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapForeignLoop | evlib.CapFiles |
			evlib.CapHangupWithoutInterest | evlib.CapUnixReset,
		New: New,
	}
}

const (
	watched  = 1 << 7 // in state[fd]: the fd is in the epoll set
	maxBatch = 1024
)

// Backend is an epoll instance serving one service thread.
type Backend struct {
	epfd    int
	foreign bool // epfd belongs to the application
	sink    evlib.Sink
	ctr     *evlib.Counters
	state   []uint8 // per fd: watched bit | interest
	events  []unix.EpollEvent
	pre     sys.Prepoll
	closed  bool
}

// New creates the backend. With cfg.Foreign set to an epoll fd (int) it
// registers its fds there instead of in an epoll instance of its own, and
// the application's loop hands their events to the core.
func New(cfg evlib.Config) (evlib.Backend, error) {
	b := &Backend{sink: cfg.Sink, ctr: cfg.Counters, events: make([]unix.EpollEvent, 128)}
	switch f := cfg.Foreign.(type) {
	case nil:
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("epoll_create1: %w", err)
		}
		b.epfd = fd
	case int:
		var st unix.Stat_t
		if f < 0 || unix.Fstat(f, &st) != nil {
			return nil, fmt.Errorf("%w: epoll fd %d is not open", evlib.ErrBadFD, f)
		}
		b.epfd, b.foreign = f, true
	default:
		return nil, fmt.Errorf("%w: want an epoll fd (int), got %T", evlib.ErrForeignUnsupported, cfg.Foreign)
	}
	return b, nil
}

func (b *Backend) ctl(op, fd int, ev evlib.Events) error {
	b.ctr.InterestChanges.Add(1)
	e := unix.EpollEvent{Events: evmask.EpollInterest(ev), Fd: int32(fd)}
	return unix.EpollCtl(b.epfd, op, fd, &e)
}

// Add implements evlib.Backend.
func (b *Backend) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if !sys.ValidFD(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
	}
	if fd < len(b.state) && b.state[fd]&watched != 0 {
		return fmt.Errorf("%w: fd %d", evlib.ErrExist, fd)
	}
	// The kernel first: the table grows only for an fd it took.
	if err := b.ctl(unix.EPOLL_CTL_ADD, fd, ev); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// Only in an application's epoll set, which holds it already.
			return fmt.Errorf("%w: fd %d is in the epoll set already", evlib.ErrExist, fd)
		}
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: fd %d: epoll cannot watch this kind of file (regular files and directories are always ready)", evlib.ErrBadFD, fd)
		}
		if errors.Is(err, unix.EBADF) {
			return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
		}
		if errors.Is(err, unix.EINVAL) && fd == b.epfd {
			return fmt.Errorf("%w: fd %d is the epoll instance itself", evlib.ErrBadFD, fd)
		}
		if b.foreign && errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("%w: fd %d is not an epoll instance", evlib.ErrForeignUnsupported, b.epfd)
		}
		return fmt.Errorf("epoll_ctl add fd %d: %w", fd, err)
	}
	if fd >= len(b.state) {
		st := make([]uint8, max(fd+1, 2*len(b.state), 64))
		copy(st, b.state)
		b.state = st
	}
	b.state[fd] = watched | uint8(ev&(evlib.Readable|evlib.Writable))
	return nil
}

// Modify implements evlib.Backend.
func (b *Backend) Modify(fd int, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if fd < 0 || fd >= len(b.state) || b.state[fd]&watched == 0 {
		return fmt.Errorf("%w: fd %d", evlib.ErrNotWatched, fd)
	}
	ev &= evlib.Readable | evlib.Writable
	if b.state[fd] == watched|uint8(ev) {
		return nil
	}
	if err := b.ctl(unix.EPOLL_CTL_MOD, fd, ev); err != nil {
		return fmt.Errorf("epoll_ctl mod fd %d: %w", fd, err)
	}
	b.state[fd] = watched | uint8(ev)
	return nil
}

// Remove implements evlib.Backend.
func (b *Backend) Remove(fd int) error {
	if b.closed || fd < 0 || fd >= len(b.state) || b.state[fd]&watched == 0 {
		return nil
	}
	b.state[fd] = 0
	if err := b.ctl(unix.EPOLL_CTL_DEL, fd, 0); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EBADF) {
		return fmt.Errorf("epoll_ctl del fd %d: %w", fd, err)
	}
	return nil
}

// Poll implements evlib.Backend. After a batch that returned events it
// may first look without blocking (see sys.Prepoll): on a loaded loop more
// work is usually ready by then, and a blocking wait that parks the thread
// costs more than a second cheap call.
//
// A batch is reported in fd order. epoll returns fds in the order they
// became ready, and the core touches each connection twice a batch (its
// read, then its write in forced service), so a large batch in that order
// walks the connections, and the kernel's sockets and files, at random and
// out of cache; in fd order, which is mostly the order they were made in,
// it walks them in address order. At 1,000 connections with 1 KiB
// messages sorting took the CPU per round trip from 2.80-2.87 µs to 2.56,
// near poll(2)'s 2.45, which reports in fd order; it costs a few
// nanoseconds an event. The kernel still moves the fds it reported to the
// back of its ready list, so a batch cut short at its size is as fair as
// before.
func (b *Backend) Poll(timeout time.Duration) (int, error) {
	if b.closed {
		return 0, evlib.ErrClosed
	}
	if b.foreign {
		return 0, fmt.Errorf("%w: the epoll fd belongs to the application", evlib.ErrAppDriven)
	}
	n, err := b.pre.Wait(timeout, b.wait)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return 0, nil
		}
		return 0, fmt.Errorf("epoll_wait: %w", err)
	}
	if n > 1 {
		slices.SortFunc(b.events[:n], func(x, y unix.EpollEvent) int { return cmp.Compare(x.Fd, y.Fd) })
	}
	for i := range n {
		e := &b.events[i]
		b.sink.Ready(int(e.Fd), evmask.FromEpoll(e.Events))
	}
	if n == len(b.events) && n < maxBatch {
		b.events = make([]unix.EpollEvent, 2*n)
	}
	return n, nil
}

func (b *Backend) wait(timeout time.Duration) (int, error) {
	b.ctr.Waits.Add(1)
	if timeout == 0 {
		return epollWaitNoblock(b.epfd, b.events)
	}
	return epollWait(b.epfd, b.events, timeout)
}

// Close implements evlib.Backend. A foreign epoll fd is left open; every
// fd the core added has been removed from it by then.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	if b.foreign {
		return nil
	}
	return unix.Close(b.epfd)
}
