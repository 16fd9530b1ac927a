//go:build unix

package conformance

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// The whole suite with the app-driven backend in an application's loop
// of the RunLoop kind: the suite's driver of such loops (passes, runs,
// the stop after destroy) on a loop that serves plugloop itself.
func TestRunLoopHost(t *testing.T) {
	RunHost(t, Host{Name: "poll RunLoop", EventLib: foreign.Name, New: newPollRunLoop})
}

// pollRunLoop is an application's loop that runs for good, as gnet's
// Polling does: unix.Poll on its own fds, a pipe for its tasks and
// plugloop's fds (a foreign.PollSet), sleeping as long as
// ServiceAdjustTimeout allows; it serves plugloop's ready fds with
// ServiceFD, then calls Service(0), then runs its tasks.
type pollRunLoop struct {
	set   *foreign.PollSet
	th    atomic.Pointer[core.Thread] // learnt from the poll-fd callbacks
	own   map[int]bool
	mine  []unix.PollFd
	task  [2]int
	mu    sync.Mutex
	queue []func() bool // under mu
	buf   []unix.PollFd
}

func newPollRunLoop(t testing.TB, thread int) HostLoop {
	l := &pollRunLoop{set: &foreign.PollSet{Thread: thread}, own: map[int]bool{}, task: [2]int{-1, -1}}
	if err := nonblockPipe(&l.task); err != nil {
		t.Fatalf("the loop's task pipe: %v", err)
	}
	return l
}

func (l *pollRunLoop) Setup(info *core.Info) {
	p := info.Protocols[0]
	inner := p.Callback
	p.Callback = func(ev core.Event) error {
		if ev.Thread != nil && ev.Thread.Index() == l.set.Thread {
			l.th.Store(ev.Thread)
		}
		return inner(ev)
	}
	info.Protocols[0] = l.set.Protocol(p)
}

func (l *pollRunLoop) AddOwn(fd int) error {
	l.own[fd] = true
	l.mine = append(l.mine, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	return nil
}

func (l *pollRunLoop) Do(f func() bool) error {
	l.mu.Lock()
	l.queue = append(l.queue, f)
	l.mu.Unlock()
	if _, err := unix.Write(l.task[1], []byte{1}); err != nil && !errors.Is(err, unix.EAGAIN) {
		return err
	}
	return nil
}

func (l *pollRunLoop) Run(hooks LoopHooks) error {
	var b [64]byte
	for {
		timeout := sys.Msec(-1)
		th := l.th.Load()
		if th != nil {
			timeout = sys.Msec(th.ServiceAdjustTimeout(-1))
		}
		l.buf = append(append(l.buf[:0], l.mine...), unix.PollFd{Fd: int32(l.task[0]), Events: unix.POLLIN})
		l.buf = l.set.AppendTo(l.buf)
		if _, err := unix.Poll(l.buf, timeout); err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		for i := range l.buf {
			p := &l.buf[i]
			switch fd := int(p.Fd); {
			case p.Revents == 0:
			case l.own[fd]:
				hooks.Own(fd)
			case fd == l.task[0]:
				for n, _ := unix.Read(fd, b[:]); n > 0; n, _ = unix.Read(fd, b[:]) {
				}
			default:
				hooks.Plugloop(fd)
				th.ServiceFD(p)
			}
		}
		if th != nil {
			th.Service(0)
		}
		for {
			l.mu.Lock()
			q := l.queue
			l.queue = nil
			l.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, f := range q {
				if f() {
					return nil
				}
			}
		}
	}
}

func (l *pollRunLoop) Watched() map[int]evlib.Events {
	return (&pollSetLoop{set: l.set}).Watched()
}

func (l *pollRunLoop) Close() error {
	unix.Close(l.task[0])
	return unix.Close(l.task[1])
}
