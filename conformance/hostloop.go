//go:build unix

package conformance

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/goid"
	"golang.org/x/sys/unix"
)

// hostRun is the application's loop for one service thread of a harness:
// the host's loop, a pipe of the application's own that it writes to and
// reads from, and the checks an application can make on every ServiceFD
// and Service call.
type hostRun struct {
	h      *harness
	host   *Host
	thread int
	th     *core.Thread // set once the context exists
	loop   HostLoop
	wl     WaitLoop      // loop as a WaitLoop, or nil
	rl     *runLoop      // loop as a RunLoop driven by the suite, or nil
	runG   atomic.Uint64 // the goroutine running the loop
	pipe   [2]int        // the application's own fd: read end, write end
	pipeMu sync.Mutex    // kick against close: timers may kick late
	shut   bool          // the pipe is closed
	wrote  atomic.Int64
	read   atomic.Int64
	waits  atomic.Uint64
	quiet  atomic.Bool // no traffic of the application's own: see whileWaiting
	iter   int
	ready  []unix.PollFd
}

// setupHost prepares the application's loops, one per service thread,
// before core.New; the protocols are already wrapped by the recorder. A
// host that has no loop for a thread beyond the first makes the test skip.
func (h *harness) setupHost(host *Host, info *core.Info) {
	t := h.t
	for i := range max(info.CountThreads, 1) {
		loop := host.New(t, i)
		if loop == nil {
			if i == 0 {
				t.Fatalf("conformance: host %q: New returned no loop for service thread 0", host.Name)
			}
			t.Skipf("conformance: host %q has a single application loop (its New returned nil for service thread %d); this test needs %d service threads, each driven by a loop of its own, so it does not run in foreign mode with this host", host.Name, i, info.CountThreads)
		}
		r := &hostRun{h: h, host: host, thread: i, loop: loop, pipe: [2]int{-1, -1}}
		switch l := loop.(type) {
		case WaitLoop:
			r.wl = l
		case RunLoop:
			r.rl = &runLoop{r: r, loop: l}
		default:
			t.Fatalf("conformance: host %q: New returned a %T, which is neither a WaitLoop nor a RunLoop", host.Name, loop)
		}
		h.hosts = append(h.hosts, r)
		t.Cleanup(r.close) // after h.cleanup
		if err := nonblockPipe(&r.pipe); err != nil {
			t.Fatalf("conformance: the application's own pipe: %v", err)
		}
		if err := r.loop.AddOwn(r.pipe[0]); err != nil {
			t.Fatalf("conformance: host %q: adding the application's own fd: %v", host.Name, err)
		}
		if r.rl != nil {
			r.rl.start() // parked until a pass or a run
		}
		// Checklist 33: a change has reached the application's watch set
		// by the time its LOCK/op/UNLOCK sequence ends, from whatever
		// goroutine.
		inner := info.Protocols[0].Callback
		info.Protocols[0].Callback = func(ev core.Event) error {
			err := inner(ev)
			switch {
			case ev.Reason == core.ReasonUnlockPoll && ev.Thread != nil && ev.Thread.Index() == r.thread:
				r.checkWatched(ev.Poll.FD)
			case ev.Reason == core.ReasonProtocolDestroy:
				// The application learns that plugloop is gone
				// (Destroy may have run on another goroutine while
				// its loop waited).
				r.kick()
			}
			return err
		}
		r.loop.Setup(info)
	}
	h.host = h.hosts[0]
}

func (r *hostRun) problem(format string, args ...any) {
	r.h.rec.mu.Lock()
	r.h.rec.problem("host %q: "+format, append([]any{r.host.Name}, args...)...)
	r.h.rec.mu.Unlock()
}

func (r *hostRun) checkWatched(fd int) {
	want, ok := r.h.rec.watchedFD(fd)
	got, gotOK := r.loop.Watched()[fd]
	if ok != gotOK || want != got {
		r.problem("after UNLOCK_POLL for fd %d the application's set has it=%v with %v, want it=%v with %v", fd, gotOK, got, ok, want)
	}
}

// kick writes a byte to the application's own pipe, which wakes its loop.
// Any goroutine may call it, even after the pipe was closed.
func (r *hostRun) kick() {
	r.pipeMu.Lock()
	defer r.pipeMu.Unlock()
	if r.shut {
		return
	}
	if n, _ := unix.Write(r.pipe[1], []byte{1}); n == 1 {
		r.wrote.Add(1)
	}
}

// drain reads what the application's own pipe holds.
func (r *hostRun) drain() {
	var b [64]byte
	for {
		n, _ := unix.Read(r.pipe[0], b[:])
		if n <= 0 {
			return
		}
		r.read.Add(int64(n))
	}
}

// iterate is one pass of the application's loop: wait at most what
// ServiceAdjustTimeout allows, offer every ready pollfd to ServiceFD,
// serve its own fd, then Service(0). It reports whether plugloop said it
// is destroyed.
func (r *hostRun) iterate(max time.Duration) (destroyed bool, err error) {
	th := r.th
	timeout := th.ServiceAdjustTimeout(max)
	r.waits.Add(1)
	r.ready, err = r.wl.Wait(r.ready[:0], timeout)
	if err != nil {
		return false, err
	}
	for i := range r.ready {
		p := &r.ready[i]
		before := p.Revents
		err := th.ServiceFD(p)
		switch {
		case errors.Is(err, core.ErrDestroyed):
			destroyed = true
		case errors.Is(err, core.ErrInService):
			// Another goroutine holds the thread; it wakes this loop
			// when done, and the fd is offered again then.
		case err == nil, errors.Is(err, core.ErrClosed):
		default:
			r.problem("ServiceFD(fd %d) returned %v", p.Fd, err)
		}
		if int(p.Fd) == r.pipe[0] {
			// Checklist 10: not plugloop's fd: nil, Revents untouched.
			if err != nil && !errors.Is(err, core.ErrDestroyed) && !errors.Is(err, core.ErrInService) {
				r.problem("ServiceFD of the application's own fd returned %v, want nil", err)
			}
			if p.Revents != before {
				r.problem("ServiceFD changed the Revents of the application's own fd from %#x to %#x", before, p.Revents)
			}
			r.drain()
			continue
		}
		switch {
		case err == nil:
			// Handled: Revents zeroed. (An fd plugloop closed on
			// another goroutine since the wait is no longer its own.)
			if _, ok := r.h.rec.watchedFD(int(p.Fd)); ok && p.Revents != 0 && p.Revents&unix.POLLNVAL == 0 {
				r.problem("ServiceFD handled fd %d but left Revents %#x, want 0", p.Fd, p.Revents)
			}
		case errors.Is(err, core.ErrClosed), errors.Is(err, core.ErrDestroyed), errors.Is(err, core.ErrInService):
			if p.Revents != before {
				r.problem("ServiceFD(fd %d) returned %v and changed Revents from %#x to %#x, want them left alone", p.Fd, err, before, p.Revents)
			}
		}
	}
	if r.iter++; r.iter%16 == 0 && !r.quiet.Load() {
		r.kick() // the application's own traffic, now and then
	}
	if r.service0() {
		destroyed = true
	}
	return destroyed, nil
}

// service0 is the Service(0) after the events of a wait. It reports
// whether plugloop said it is destroyed.
func (r *hostRun) service0() (destroyed bool) {
	switch err := r.th.Service(0); {
	case errors.Is(err, core.ErrDestroyed):
		return true
	case err == nil, errors.Is(err, core.ErrInService):
	default:
		r.problem("Service(0) returned %v", err)
	}
	return false
}

// run is the application's loop until plugloop is destroyed (it returns
// nil, after checking that the loop carries on without plugloop) or cctx
// ends (it returns cctx.Err()).
func (r *hostRun) run(cctx context.Context) error {
	if r.rl != nil {
		return r.rl.run(cctx)
	}
	r.runG.Store(goid.ID())
	defer context.AfterFunc(cctx, r.kick)()
	if err := r.th.Service(0); errors.Is(err, core.ErrDestroyed) {
		return r.afterDestroy()
	}
	for {
		if err := cctx.Err(); err != nil {
			return err
		}
		destroyed, err := r.iterate(-1)
		if err != nil {
			return err
		}
		if destroyed {
			return r.afterDestroy()
		}
	}
}

// afterDestroy checks checklist 26 and 27 from the application's side:
// once plugloop is gone its loop still works and serves its own fd, and
// nothing of plugloop's is left in its watch set.
func (r *hostRun) afterDestroy() error {
	select {
	case <-r.h.ctx.Done():
	case <-timeAfterHang():
		r.problem("ServiceFD or Service reported ErrDestroyed but Done was not closed (hang guard)")
		return nil
	}
	r.checkEmpty()
	r.kick()
	deadline := time.Now().Add(hang)
	for r.read.Load() < r.wrote.Load() {
		if time.Now().After(deadline) {
			r.problem("after destroy the loop no longer delivers its own fd: read %d of %d bytes", r.read.Load(), r.wrote.Load())
			return nil
		}
		ready, err := r.wl.Wait(nil, time.Until(deadline))
		if err != nil {
			r.problem("waiting after destroy: %v", err)
			return nil
		}
		for _, p := range ready {
			if int(p.Fd) != r.pipe[0] {
				r.problem("after destroy the loop reported fd %d, which is not its own", p.Fd)
			}
		}
		r.drain()
	}
	r.checkEmpty()
	return nil
}

func (r *hostRun) checkEmpty() {
	if w := r.loop.Watched(); len(w) != 0 {
		r.problem("after destroy plugloop's fds %v are still in the application's watch set", w)
	}
}

// close stops a RunLoop, checks the application's own bytes and releases
// the loop.
func (r *hostRun) close() {
	if r.rl != nil {
		r.rl.stop()
	}
	r.drain()
	if w, rd := r.wrote.Load(), r.read.Load(); w != rd {
		r.h.t.Errorf("conformance: host %q: the application wrote %d bytes to its own pipe and its loop read %d", r.host.Name, w, rd)
	}
	r.checkEmpty()
	if err := r.loop.Close(); err != nil {
		r.h.t.Errorf("conformance: host %q: Close: %v", r.host.Name, err)
	}
	r.pipeMu.Lock()
	r.shut = true
	unix.Close(r.pipe[0])
	unix.Close(r.pipe[1])
	r.pipeMu.Unlock()
}

// watchedFD returns the interest the poll-fd callbacks gave fd, if it is
// watched.
func (r *recorder) watchedFD(fd int) (evlib.Events, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev, ok := r.watched[fd]
	return ev, ok
}

// waits counts the loop's waits: the backend's Poll calls, or the host
// loop's waits in foreign mode.
func (h *harness) waits() uint64 {
	if h.host != nil {
		return h.host.waits.Load()
	}
	return h.th.Stats().Waits
}

// run runs the loop on the calling goroutine: Context.Run, or in foreign
// mode the host's loops, thread 0's on the calling goroutine and every
// other thread's on a goroutine of its own, until all of them return.
func (h *harness) run(cctx context.Context) error {
	if h.host == nil {
		return h.ctx.Run(cctx)
	}
	errs := make(chan error, len(h.hosts))
	for _, r := range h.hosts[1:] {
		go func() { errs <- r.run(cctx) }()
	}
	err := h.host.run(cctx)
	for range h.hosts[1:] {
		if e := <-errs; err == nil {
			err = e
		}
	}
	return err
}

// service is one pass on the calling goroutine: Thread.Service(timeout),
// or one iteration of the host's loop in foreign mode (for a RunLoop: one
// pass of the loop on its goroutine, this one waiting for it).
func (h *harness) service(timeout time.Duration) error {
	if h.host == nil {
		return h.th.Service(timeout)
	}
	var destroyed bool
	var err error
	if h.host.rl != nil {
		destroyed, err = h.host.rl.pass(timeout)
	} else {
		destroyed, err = h.host.iterate(timeout)
	}
	if err == nil && destroyed {
		err = core.ErrDestroyed
	}
	return err
}
