//go:build linux && !poll_opt

package evlib_gnet_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/panjf2000/gnet/v2/pkg/queue"
	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/plugloop/plugloop/internal/evmask"
	"github.com/plugloop/plugloop/internal/sys"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The whole conformance suite with plugloop attached to gnet Pollers the
// application owns, one per service thread, each polled by the
// application's Polling, which forwards what is not its own to the
// Dispatcher.
func TestConformanceForeignPoller(t *testing.T) {
	conformance.RunHost(t, pollerHost())
}

// pollerHost is a gnet Poller per service thread, run by the suite as a
// conformance.RunLoop: Polling serves the application's own pipe and
// forwards every other fd to evlib_gnet.Dispatcher(poller).Dispatch; the
// suite's tasks are gnet Trigger tasks; a task returning ErrEngineShutdown
// ends Polling, once, when the application is done with the poller.
func pollerHost() conformance.Host {
	return conformance.Host{Name: "gnet Poller", EventLib: evlib_gnet.Name, New: func(t testing.TB, thread int) conformance.HostLoop {
		before, err := anonFDs()
		if err != nil {
			t.Fatalf("listing the process' fds: %v", err)
		}
		p, err := netpoll.OpenPoller()
		if err != nil {
			t.Fatalf("gnet OpenPoller: %v", err)
		}
		l := &pollerLoop{thread: thread, poller: p, host: evlib_gnet.Dispatcher(p), idle: map[int]bool{}, own: map[int]bool{}}
		if err := l.findFDs(before); err != nil {
			p.Close()
			t.Fatalf("finding the gnet poller's epoll fd: %v", err)
		}
		return l
	}}
}

type pollerLoop struct {
	thread int
	poller *netpoll.Poller
	host   *evlib_gnet.Host
	epfd   int           // the poller's epoll fd
	efd    int           // gnet's own wake eventfd, registered in it
	set    *sys.EpollSet // under mu
	mu     sync.Mutex
	idle   map[int]bool // under mu: plugloop's fds watched with no interest
	own    map[int]bool
}

// anonFDs returns the process' fds that are anonymous inodes (epoll,
// eventfd...) with what they are.
func anonFDs() (map[int]string, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	m := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(link, "anon_inode:") {
			m[fd] = link
		}
	}
	return m, nil
}

// findFDs finds the epoll fd and the eventfd OpenPoller made (gnet keeps
// them private): the new ones since before, the eventfd registered in the
// epoll fd. The suite's tests run one at a time, so nothing else opens
// such fds meanwhile; if something did, it fails rather than guess.
func (l *pollerLoop) findFDs(before map[int]string) error {
	after, err := anonFDs()
	if err != nil {
		return err
	}
	l.epfd, l.efd = -1, -1
	for fd, link := range after {
		if before[fd] == link {
			continue
		}
		switch link {
		case "anon_inode:[eventpoll]":
			if l.epfd >= 0 {
				return errors.New("two new epoll fds")
			}
			l.epfd = fd
		case "anon_inode:[eventfd]":
			if l.efd >= 0 {
				return errors.New("two new eventfds")
			}
			l.efd = fd
		}
	}
	if l.epfd < 0 || l.efd < 0 {
		return fmt.Errorf("no new epoll fd and eventfd (%d, %d)", l.epfd, l.efd)
	}
	if l.set, err = sys.OpenEpollSet(l.epfd); err != nil {
		return err
	}
	set, err := l.kernelSet()
	if err == nil && set[l.efd] == 0 {
		err = fmt.Errorf("eventfd %d is not registered in epoll fd %d", l.efd, l.epfd)
	}
	if err != nil {
		l.set.Close()
	}
	return err
}

// Setup attaches the thread to the poller. It also follows the poll-fd
// callbacks for the fds plugloop watches with no interest: gnet cannot
// register an fd with an empty mask, so the backend takes such an fd out
// of the poller, where the kernel's set cannot show it (see Watched).
func (l *pollerLoop) Setup(info *core.Info) {
	if n := l.thread + 1; len(info.Foreign) < n {
		info.Foreign = append(info.Foreign, make([]any, n-len(info.Foreign))...)
	}
	info.Foreign[l.thread] = l.poller
	inner := info.Protocols[0].Callback
	info.Protocols[0].Callback = func(ev core.Event) error {
		if ev.Thread != nil && ev.Thread.Index() == l.thread {
			switch ev.Reason {
			case core.ReasonAddPollFD, core.ReasonChangeModePollFD:
				l.mu.Lock()
				if ev.Poll.Events&(evlib.Readable|evlib.Writable) == 0 {
					l.idle[ev.Poll.FD] = true
				} else {
					delete(l.idle, ev.Poll.FD)
				}
				l.mu.Unlock()
			case core.ReasonDelPollFD:
				l.mu.Lock()
				delete(l.idle, ev.Poll.FD)
				l.mu.Unlock()
			}
		}
		return inner(ev)
	}
}

func (l *pollerLoop) AddOwn(fd int) error {
	l.own[fd] = true
	return l.poller.AddRead(&netpoll.PollAttachment{FD: fd}, false)
}

func (l *pollerLoop) Run(hooks conformance.LoopHooks) error {
	err := l.poller.Polling(func(fd int, ev netpoll.IOEvent, fl netpoll.IOFlags) error {
		if l.own[fd] {
			hooks.Own(fd)
			return nil
		}
		hooks.Plugloop(fd)
		return l.host.Dispatch(fd, ev, fl)
	})
	if errors.Is(err, gerrors.ErrEngineShutdown) {
		return nil
	}
	return err
}

func (l *pollerLoop) Do(f func() bool) error {
	return l.poller.Trigger(queue.HighPriority, func(any) error {
		if f() {
			return gerrors.ErrEngineShutdown
		}
		return nil
	}, nil)
}

// kernelSet reads the registrations of the epoll fd from the kernel.
func (l *pollerLoop) kernelSet() (map[int]uint32, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.set.Read()
}

// Watched is what the kernel has in the poller's set besides gnet's
// eventfd and the application's own fds, plus the fds plugloop watches
// with no interest as far as the kernel has them not (an fd with no
// interest that the kernel still has is reported with the kernel's
// interest, which fails the comparison).
func (l *pollerLoop) Watched() map[int]evlib.Events {
	set, err := l.kernelSet()
	if err != nil {
		return map[int]evlib.Events{-1: 0} // cannot tell: fail the comparison
	}
	m := map[int]evlib.Events{}
	l.mu.Lock()
	for fd := range l.idle {
		m[fd] = 0
	}
	l.mu.Unlock()
	for fd, mask := range set {
		if fd == l.efd || l.own[fd] {
			continue
		}
		m[fd] = evmask.FromEpollInterest(mask)
	}
	return m
}

func (l *pollerLoop) Close() error {
	l.set.Close()
	return l.poller.Close()
}

// Why the suite runs the gnet host as a RunLoop, parked in tasks, rather
// than entering Polling for one pass and leaving it: in gnet v2.10.0 a
// task returning ErrEngineShutdown ends Polling before Polling clears its
// wakeup flag, so a later Trigger writes nothing to gnet's eventfd (which
// is edge-triggered and never read) and a Polling entered again never
// runs its task. Checked on the eventfd's counter, which holds the one
// write of the first Trigger and nothing of the second's.
func TestPollingCannotBeLeftAndEntered(t *testing.T) {
	before, err := anonFDs()
	require.NoError(t, err)
	p, err := netpoll.OpenPoller()
	require.NoError(t, err)
	l := &pollerLoop{poller: p}
	require.NoError(t, l.findFDs(before))
	defer l.Close()
	require.NoError(t, p.Trigger(queue.HighPriority, func(any) error { return gerrors.ErrEngineShutdown }, nil))
	require.ErrorIs(t, p.Polling(func(int, netpoll.IOEvent, netpoll.IOFlags) error { return nil }), gerrors.ErrEngineShutdown)
	require.NoError(t, p.Trigger(queue.HighPriority, func(any) error { return nil }, nil))
	var b [8]byte
	n, err := unix.Read(l.efd, b[:])
	require.NoError(t, err)
	require.Equal(t, 8, n)
	require.Equal(t, uint64(1), binary.NativeEndian.Uint64(b[:]), "gnet's eventfd was written by the first Trigger only")
}
