//go:build unix

// Package simloop is a simulated event-loop backend for deterministic tests
// of the core: real file descriptors, a fake clock.
//
// Readiness is real: the backend watches the fds the core adds with the
// poll backend (evlib_poll), so tests keep using real sockets, pipes and
// files. Time is not: the backend implements evlib.Clock, so every timer and
// timeout of the core runs on a Clock that moves only when
//
//   - Poll would block with a timeout and nothing is ready: instead of
//     sleeping, the clock jumps to the end of the timeout and Poll returns
//     (a deadline the clock cannot reach, math.MaxInt64 nanoseconds, is
//     never reached: that Poll blocks like one without a timeout);
//   - the test calls Clock.Advance.
//
// A Poll without a timeout (< 0) that finds nothing ready blocks for real
// until a watched fd is ready or the core is woken (the core's wake fd is
// one of the fds), as time cannot make anything due then.
//
// A test that services the thread on its own goroutine (Thread.Service)
// therefore sees every timer fire at exactly its deadline, at once, with no
// sleep. Run on another goroutine works too, but the loop then skips ahead
// to its next deadline whenever it finds nothing ready, however soon the
// test means to act: such a test cannot rely on the clock standing still.
//
// The backend "sim-foreign" is the same for the foreign mode: app-driven
// (evlib.CapAppDriven), it never polls; the test is the application's loop
// and moves the clock itself, by what Thread.ServiceAdjustTimeout says it
// may sleep.
//
// Importing the package registers the backends as "sim" and "sim-foreign",
// never chosen by default. Each service thread's backend has a clock of its
// own unless the test lends it one in Info.Foreign (one entry per thread;
// threads may share a Clock), which is how the test reads and advances it:
//
//	clk := simloop.NewClock()
//	ctx, err := core.New(core.Info{EventLib: simloop.Name, Foreign: []any{clk}, ...})
package simloop

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_poll"
)

// The backends' registry names.
const (
	Name        = "sim"
	ForeignName = "sim-foreign"
)

func init() {
	// CapForeignLoop: what the application lends them is a Clock. The
	// rest are the poll backend's, which does their watching.
	caps := evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapFiles | evlib.CapForeignLoop |
		evlib.CapHangupWithoutInterest | evlib.CapUnixReset
	for _, d := range []evlib.Descriptor{
		{Name: Name, Caps: caps, New: New},
		{Name: ForeignName, Caps: caps | evlib.CapAppDriven, New: NewAppDriven},
	} {
		d.Priority = -100 // below every real backend's: only where named
		if err := evlib.Register(d); err != nil {
			panic(err)
		}
	}
}

// Clock is a fake monotonic clock, starting at 0. Any goroutine may read or
// advance it.
type Clock struct {
	now atomic.Int64 // nanoseconds
}

// NewClock returns a clock that reads 0.
func NewClock() *Clock { return new(Clock) }

// Now returns the time on the clock. It implements evlib.Clock's Now for
// the backends that use the clock.
func (c *Clock) Now() time.Duration { return time.Duration(c.now.Load()) }

// Advance moves the clock d forward, saturating at math.MaxInt64
// nanoseconds; d <= 0 leaves it alone, as the clock never goes back. It
// does not wake a backend blocked in Poll: one blocks only while it has no
// deadline, so there is nothing that moving time could make due. A thread
// sees the new time at its next pass.
func (c *Clock) Advance(d time.Duration) {
	if d <= 0 {
		return
	}
	for {
		now := c.now.Load()
		if c.now.CompareAndSwap(now, sat(now, int64(d))) {
			return
		}
	}
}

// advanceTo moves the clock forward to at least t: another backend sharing
// the clock may have moved it further already.
func (c *Clock) advanceTo(t int64) {
	for {
		now := c.now.Load()
		if now >= t || c.now.CompareAndSwap(now, t) {
			return
		}
	}
}

// sat is a+b (b >= 0), saturating at math.MaxInt64.
func sat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// Backend is a poll backend whose waits move a fake clock instead of taking
// time. It implements evlib.Backend and evlib.Clock.
type Backend struct {
	evlib.Backend // the poll backend: Add, Modify, Remove, Close
	clock         *Clock
	appDriven     bool
}

// New creates a "sim" backend. Config.Foreign may hold the *Clock to use;
// nil gives the backend a clock of its own. Anything else is refused with
// evlib.ErrForeignUnsupported.
func New(cfg evlib.Config) (evlib.Backend, error) { return newBackend(cfg, false) }

// NewAppDriven creates a "sim-foreign" backend: like New, but its Poll
// returns evlib.ErrAppDriven, for the application's loop drives the core.
func NewAppDriven(cfg evlib.Config) (evlib.Backend, error) { return newBackend(cfg, true) }

func newBackend(cfg evlib.Config, appDriven bool) (evlib.Backend, error) {
	clock, ok := cfg.Foreign.(*Clock)
	if cfg.Foreign != nil && !ok {
		return nil, fmt.Errorf("%w: the sim backend takes a *simloop.Clock, not %T", evlib.ErrForeignUnsupported, cfg.Foreign)
	}
	if clock == nil {
		clock = NewClock()
	}
	cfg.Foreign = nil
	pb, err := evlib_poll.New(cfg)
	if err != nil {
		return nil, err
	}
	return &Backend{Backend: pb, clock: clock, appDriven: appDriven}, nil
}

// Now implements evlib.Clock: the core times everything on the clock.
func (b *Backend) Now() time.Duration { return b.clock.Now() }

// Clock returns the clock the backend uses.
func (b *Backend) Clock() *Clock { return b.clock }

// Poll implements evlib.Backend. It looks at the fds without blocking; if
// none is ready, a timeout moves the clock to its end, and no timeout
// blocks until an fd is ready or the core is woken.
func (b *Backend) Poll(timeout time.Duration) (int, error) {
	if b.appDriven {
		return 0, evlib.ErrAppDriven
	}
	start := int64(b.clock.Now())
	n, err := b.Backend.Poll(0)
	if n > 0 || err != nil || timeout == 0 {
		return n, err
	}
	// Nothing was ready. (A zero-timeout poll(2) fails with EINTR only
	// when nothing was, which the poll backend reports as 0: the same.)
	if timeout > 0 {
		if end := sat(start, int64(timeout)); end < math.MaxInt64 {
			b.clock.advanceTo(end)
			return 0, nil
		}
	}
	return b.Backend.Poll(-1)
}
