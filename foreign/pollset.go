//go:build unix

package foreign

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/evmask"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// PollSet is the pollfd set of a unix.Poll loop the application owns, kept
// in step with plugloop's poll-fd callbacks. Its methods may be called from
// any goroutine; a host loop looks like this:
//
//	set := new(foreign.PollSet)
//	ctx, _ := core.New(core.Info{EventLib: "foreign", Protocols: []core.Protocol{set.Protocol(myProto)}})
//	t := ctx.Thread(0)
//	mine := []unix.PollFd{{Fd: int32(myFD), Events: unix.POLLIN}}
//	for {
//		if err := set.Poll(t, mine, time.Second); err != nil {
//			break // core.ErrDestroyed once the context is gone
//		}
//		if mine[0].Revents != 0 {
//			// the application's own fd is ready
//		}
//	}
//
// With several service threads (core.Info.CountThreads), each thread needs
// a loop of its own: give each loop a PollSet with Thread set to its
// thread's index and wrap the first protocol with each set in turn
// (setB.Protocol(setA.Protocol(p))); a set follows only its thread's fds.
//
// Destroy from another goroutine ends a Poll that sleeps: the set keeps a
// descriptor of its own for that (an eventfd, or a pipe where there is
// none) from its first Poll until Poll returns core.ErrDestroyed.
type PollSet struct {
	// Thread is the index of the service thread whose fds the set follows.
	Thread int

	mu  sync.Mutex
	th  *core.Thread // the thread whose poll-fd callbacks the set follows, once one came
	fds []unix.PollFd
	buf []unix.PollFd // Poll's scratch: the application's fds, ours, stop

	// stop wakes a sleeping Poll on PROTOCOL_DESTROY: Destroy on another
	// goroutine closes plugloop's fds, which wakes no poll(2) watching
	// them. Made by the first Poll; closed by whichever of that Poll and
	// PROTOCOL_DESTROY comes second.
	stop    sys.Waker
	hasStop bool
	inPoll  bool // a Poll runs: buf is in use
	polling bool // a Poll is inside unix.Poll
	gone    bool // PROTOCOL_DESTROY came
}

// Protocol returns p with a callback that keeps the set up to date before
// passing every event on to p's own callback. It must be the context's
// first protocol, which is the one that receives the poll-fd reasons.
func (s *PollSet) Protocol(p core.Protocol) core.Protocol {
	inner := p.Callback
	p.Callback = func(ev core.Event) error {
		if ev.Reason == core.ReasonProtocolDestroy {
			s.destroyed()
		}
		reason := ev.Reason
		if ev.Thread == nil || ev.Thread.Index() != s.Thread {
			reason = 0 // another thread's fd: another set's business
		}
		switch reason {
		case core.ReasonAddPollFD:
			s.mu.Lock()
			s.th = ev.Thread
			s.fds = append(s.fds, unix.PollFd{Fd: int32(ev.Poll.FD), Events: PollEvents(ev.Poll.Events)})
			s.mu.Unlock()
		case core.ReasonDelPollFD:
			s.mu.Lock()
			s.fds = slices.DeleteFunc(s.fds, func(p unix.PollFd) bool { return int(p.Fd) == ev.Poll.FD })
			s.mu.Unlock()
		case core.ReasonChangeModePollFD:
			s.mu.Lock()
			for i := range s.fds {
				if int(s.fds[i].Fd) == ev.Poll.FD {
					s.fds[i].Events = PollEvents(ev.Poll.Events)
				}
			}
			s.mu.Unlock()
		}
		if inner == nil {
			return nil
		}
		return inner(ev)
	}
	return p
}

// destroyed ends a Poll that sleeps, or releases stop if none does.
func (s *PollSet) destroyed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone = true
	switch {
	case !s.hasStop:
	case s.polling:
		s.stop.Signal()
	default:
		s.closeStop()
	}
}

func (s *PollSet) closeStop() {
	if s.hasStop {
		s.stop.Close()
		s.hasStop = false
	}
}

// AppendTo appends plugloop's pollfds to dst, with Revents cleared.
func (s *PollSet) AppendTo(dst []unix.PollFd) []unix.PollFd {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(dst, s.fds...)
}

// Len returns how many fds plugloop has asked the application to watch.
func (s *PollSet) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fds)
}

// Poll is one iteration of the application's loop: it waits with poll(2)
// (ppoll on Linux, to the nanosecond) on mine and plugloop's fds for at
// most max (less when plugloop has work due; max < 0 means no limit),
// hands plugloop its ready fds, runs forced service, and leaves the
// Revents of mine set for the caller. A loop-only call that another
// goroutine makes meanwhile is no error: it wakes the loop when it is
// done, and the next Poll does what this one could not. Poll returns
// core.ErrDestroyed once the context is destroyed, an error wrapping
// core.ErrInvalid when t is not the set's Thread or the set heard of none
// of its fds (Protocol did not wrap the context's first protocol), and one
// wrapping core.ErrInService when a Poll of the same set is running
// (called from one of plugloop's callbacks, or from a second goroutine).
func (s *PollSet) Poll(t *core.Thread, mine []unix.PollFd, max time.Duration) error {
	if t == nil || t.Index() != s.Thread {
		// The set holds only its own thread's fds: polling another
		// thread with it would never service that thread's.
		return fmt.Errorf("%w: a PollSet for service thread %d polled with %s", core.ErrInvalid, s.Thread, threadName(t))
	}
	// Before ServiceAdjustTimeout, which ends the last wait's events (it
	// closes the fds closed meanwhile): a second Poll must not end those
	// of one still offering them.
	s.mu.Lock()
	if s.th != nil && s.th != t {
		// Same index, another context: its fds are in no set either.
		s.mu.Unlock()
		return fmt.Errorf("%w: a PollSet following another context's thread %d polled with %s", core.ErrInvalid, s.Thread, threadName(t))
	}
	if s.th == nil && t.Context().Caps()&evlib.CapAppDriven != 0 {
		// An app-driven thread announces its wake fd at New: a set that
		// heard of no fd is not wired, and would sleep with nobody served.
		s.mu.Unlock()
		return fmt.Errorf("%w: the PollSet heard of no fd of thread %d: wrap the context's first protocol with PollSet.Protocol", core.ErrInvalid, s.Thread)
	}
	if s.inPoll {
		s.mu.Unlock()
		return fmt.Errorf("%w: PollSet.Poll called while a Poll of the same set runs", core.ErrInService)
	}
	s.inPoll = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inPoll = false
		s.mu.Unlock()
	}()
	timeout := t.ServiceAdjustTimeout(max)
	s.mu.Lock()
	if s.gone {
		s.closeStop()
		s.mu.Unlock()
		for i := range mine {
			mine[i].Revents = 0 // not polled
		}
		return core.ErrDestroyed
	}
	if !s.hasStop {
		w, err := sys.NewWaker()
		if err != nil {
			s.mu.Unlock()
			return err
		}
		s.stop, s.hasStop = w, true
	}
	s.buf = append(append(append(s.buf[:0], mine...), s.fds...), unix.PollFd{Fd: int32(s.stop.R), Events: unix.POLLIN})
	s.polling = true
	s.mu.Unlock()
	_, err := sys.PollWait(s.buf, timeout)
	s.mu.Lock()
	s.polling = false
	gone := s.gone
	if gone {
		s.closeStop()
	}
	s.mu.Unlock()
	for i := range mine {
		mine[i].Revents = s.buf[i].Revents
	}
	switch {
	case gone:
		return core.ErrDestroyed
	case err != nil && !errors.Is(err, unix.EINTR):
		return err
	}
	for i := len(mine); i < len(s.buf)-1; i++ {
		if s.buf[i].Revents == 0 {
			continue
		}
		if err := t.ServiceFD(&s.buf[i]); errors.Is(err, core.ErrDestroyed) {
			return err
		}
	}
	// ErrInService here is another goroutine's loop-only call holding the
	// thread: see above.
	if err := t.Service(0); err != nil && !errors.Is(err, core.ErrInService) {
		return err
	}
	return nil
}

func threadName(t *core.Thread) string {
	if t == nil {
		return "a nil thread"
	}
	return fmt.Sprintf("thread %d", t.Index())
}

// PollEvents is the pollfd Events field for the interest an
// ADD_POLL_FD or CHANGE_MODE_POLL_FD callback carries (Event.Poll.Events).
func PollEvents(ev evlib.Events) int16 { return evmask.PollInterest(ev) }
