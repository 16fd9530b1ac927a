//go:build unix

// Package evlib_poll is plugloop's poll(2) backend, the portable baseline
// (lws' default loop). Interest lives in a pollfd array that the kernel
// scans on every wait, so it costs O(fds) per wait but nothing per interest
// change.
//
// Import it for its side effect of registering the backend "poll":
//
//	import _ "github.com/plugloop/plugloop/evlib_poll"
//
// The core imports it already.
package evlib_poll

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

// Name is the backend's registry name.
const Name = "poll"

func init() {
	if err := evlib.Register(evlib.Descriptor{
		Name: Name, Flag: evlib.FlagPoll, Priority: 10,
		Caps: evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapFiles | evlib.CapHangupWithoutInterest |
			evlib.CapUnixReset,
		New: New,
	}); err != nil {
		panic(err)
	}
}

type ready struct {
	fd int
	ev evlib.Events
}

// Backend is a pollfd set serving one service thread.
type Backend struct {
	sink   evlib.Sink
	ctr    *evlib.Counters
	fds    []unix.PollFd
	pos    []int32 // fd → index in fds, -1 when not watched
	ready  []ready
	pre    sys.Prepoll
	closed bool
}

// New creates the backend. It cannot attach to a foreign loop.
func New(cfg evlib.Config) (evlib.Backend, error) {
	if cfg.Foreign != nil {
		return nil, fmt.Errorf("%w: the poll backend owns its pollfd set", evlib.ErrForeignUnsupported)
	}
	return &Backend{sink: cfg.Sink, ctr: cfg.Counters}, nil
}

func (b *Backend) index(fd int) int {
	if fd < 0 || fd >= len(b.pos) {
		return -1
	}
	return int(b.pos[fd])
}

// Add implements evlib.Backend.
func (b *Backend) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	if !sys.ValidFD(fd) {
		return fmt.Errorf("%w: fd %d", evlib.ErrBadFD, fd)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return fmt.Errorf("%w: fd %d: %v", evlib.ErrBadFD, fd, err)
	}
	if b.index(fd) >= 0 {
		return fmt.Errorf("%w: fd %d", evlib.ErrExist, fd)
	}
	for fd >= len(b.pos) {
		n := max(2*len(b.pos), 64)
		pos := make([]int32, n)
		copy(pos, b.pos)
		for i := len(b.pos); i < n; i++ {
			pos[i] = -1
		}
		b.pos = pos
	}
	b.pos[fd] = int32(len(b.fds))
	b.fds = append(b.fds, unix.PollFd{Fd: int32(fd), Events: evmask.PollInterest(ev)})
	return nil
}

// Modify implements evlib.Backend. It makes no system call.
func (b *Backend) Modify(fd int, ev evlib.Events) error {
	if b.closed {
		return evlib.ErrClosed
	}
	i := b.index(fd)
	if i < 0 {
		return fmt.Errorf("%w: fd %d", evlib.ErrNotWatched, fd)
	}
	b.fds[i].Events = evmask.PollInterest(ev)
	return nil
}

// Remove implements evlib.Backend: the last pollfd moves into the hole.
func (b *Backend) Remove(fd int) error {
	i := b.index(fd)
	if i < 0 {
		return nil
	}
	last := len(b.fds) - 1
	if i != last {
		b.fds[i] = b.fds[last]
		b.pos[b.fds[i].Fd] = int32(i)
	}
	b.fds = b.fds[:last]
	b.pos[fd] = -1
	return nil
}

// Poll implements evlib.Backend. Ready fds are collected before any is
// reported, because handling one may add or remove others.
func (b *Backend) Poll(timeout time.Duration) (int, error) {
	if b.closed {
		return 0, evlib.ErrClosed
	}
	n, err := b.pre.Wait(timeout, b.wait)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return 0, nil
		}
		return 0, fmt.Errorf("poll: %w", err)
	}
	b.ready = b.ready[:0]
	for i := range b.fds {
		if r := b.fds[i].Revents; r != 0 {
			b.ready = append(b.ready, ready{int(b.fds[i].Fd), evmask.FromPoll(r)})
			if len(b.ready) == n {
				break
			}
		}
	}
	// In fd order, as the other backends report their batches (Remove
	// moves the array's last entry into the hole).
	if len(b.ready) > 1 {
		slices.SortFunc(b.ready, func(x, y ready) int { return cmp.Compare(x.fd, y.fd) })
	}
	for _, r := range b.ready {
		b.sink.Ready(r.fd, r.ev)
	}
	return len(b.ready), nil
}

func (b *Backend) wait(timeout time.Duration) (int, error) {
	b.ctr.Waits.Add(1)
	return sys.PollWait(b.fds, timeout)
}

// Close implements evlib.Backend.
func (b *Backend) Close() error {
	b.closed = true
	b.fds, b.pos = nil, nil
	return nil
}
