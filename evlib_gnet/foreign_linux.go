//go:build linux && !poll_opt

package evlib_gnet

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/panjf2000/gnet/v2/pkg/logging"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/plugloop/plugloop/internal/evmask"
	"golang.org/x/sys/unix"
)

// Host is the dispatcher of a *netpoll.Poller the application owns and
// polls, for the plugloop service threads attached to it (a backend is
// attached by creating it with the poller as Config.Foreign, which is
// core.Info{EventLib: "gnet", Foreign: []any{poller}}).
//
// gnet's default build has one Polling callback per poller, so the
// application's callback handles its own fds and forwards every other one:
//
//	host := evlib_gnet.Dispatcher(poller)
//	poller.Polling(func(fd int, ev netpoll.IOEvent, fl netpoll.IOFlags) error {
//		if fd == myFD {
//			... // the application's own work
//			return nil
//		}
//		return host.Dispatch(fd, ev, fl)
//	})
//
// Everything plugloop does then runs on the application's Polling
// goroutine, through Dispatch: the events of its fds, and wakeups and
// timers, which make an eventfd of plugloop's in the poller readable.
// plugloop queues no task with Trigger: gnet runs queued tasks until none
// is left before it polls again, so wakeups as tasks could keep the poller
// from its fds. plugloop never stops the application's Polling and never
// closes its poller; destroying the context deletes every registration
// plugloop made. Context.Run and
// Thread.Service's waits do not apply: the application's loop drives the
// thread (Run returns an error wrapping evlib.ErrAppDriven).
type Host struct {
	mu  sync.Mutex
	bes atomic.Pointer[[]*Backend]
}

var hosts sync.Map // weak.Pointer[netpoll.Poller] -> *Host

// Dispatcher returns the dispatcher of the application's poller p. It is
// the same *Host for the same poller, whether it is called before or after
// plugloop attached to p.
func Dispatcher(p *netpoll.Poller) *Host {
	key := weak.Make(p)
	if h, ok := hosts.Load(key); ok {
		return h.(*Host)
	}
	h, loaded := hosts.LoadOrStore(key, &Host{})
	if !loaded {
		runtime.AddCleanup(p, func(k weak.Pointer[netpoll.Poller]) { hosts.Delete(k) }, key)
	}
	return h.(*Host)
}

func (h *Host) attach(b *Backend) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var list []*Backend
	if old := h.bes.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, b)
	h.bes.Store(&list)
}

func (h *Host) detach(b *Backend) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var list []*Backend
	if old := h.bes.Load(); old != nil {
		for _, x := range *old {
			if x != b {
				list = append(list, x)
			}
		}
	}
	h.bes.Store(&list)
}

// Owns reports whether fd is one plugloop registered in the poller.
func (h *Host) Owns(fd int) bool {
	return h.find(fd) != nil
}

func (h *Host) find(fd int) *Backend {
	list := h.bes.Load()
	if list == nil {
		return nil
	}
	for _, b := range *list {
		b.fdMu.Lock()
		mine := fd >= 0 && fd < len(b.fds) && b.fds[fd].st&regBit != 0
		b.fdMu.Unlock()
		if mine {
			return b
		}
	}
	return nil
}

// Dispatch services an event of the application's Polling for an fd
// plugloop registered, on the calling goroutine, which must be the one
// running the poller's Polling. An fd plugloop does not know is ignored
// (a stale event of a just-removed fd). It returns nil: it never asks
// Polling to stop, whatever happens to plugloop.
func (h *Host) Dispatch(fd int, ev netpoll.IOEvent, _ netpoll.IOFlags) error {
	if b := h.find(fd); b != nil {
		b.dispatch(fd, ev)
	}
	return nil
}

// dispatch takes one event of the application's Polling. An fd's event is
// held; when due's event comes (see Batches), after a wakeup or timer
// (sig) and while work is pending (idle), the core gets the events held, in
// fd order, then runs the forced service and timers that follow a wait,
// and the next pass is scheduled.
func (b *Backend) dispatch(fd int, e netpoll.IOEvent) {
	if b.isDown.Load() {
		return
	}
	switch fd {
	case b.sig.R:
		// A wakeup or a timer. sig and due are level-triggered on a
		// foreign poller, and read here (see the design notes).
		b.consumeSig()
	case b.idle.R:
	case b.due.R:
		b.due.Drain()
		b.dueOn = false
	case b.reap.R:
		if len(b.batch) == 0 {
			b.reaped()
			return
		}
		// Events held from an earlier batch may be of fds that a
		// loop-only call removed and handed to CloseFD since: they go to
		// the core while those numbers are still theirs, then reap closes.
		defer b.reaped()
	default:
		if b.direct == 0 {
			b.hold(fd, e)
			return
		}
		b.direct--
		r := evmask.ToPoll(evmask.FromEpoll(e))
		pfd := unix.PollFd{Fd: int32(fd), Events: r, Revents: r}
		b.drv.ServiceFD(&pfd)
	}
	for _, e := range b.takeBatch() {
		r := evmask.ToPoll(evmask.FromEpoll(e.ev))
		pfd := unix.PollFd{Fd: e.fd, Events: r, Revents: r}
		b.drv.ServiceFD(&pfd)
	}
	b.batch = b.batch[:0]
	b.servicePass()
}

func (b *Backend) servicePass() {
	if b.isDown.Load() {
		return
	}
	if err := b.drv.Service(0); err != nil || b.isDown.Load() {
		return // destroyed: Close ran inside
	}
	b.scheduleOpen(b.drv.ServiceAdjustTimeout(-1))
}

// scheduleOpen is schedule for a pass run outside the core's hold on the
// thread: Destroy on another goroutine may be closing the backend right
// now. Close stops the timer and closes idle under mu, so this either
// schedules before it or not at all.
func (b *Backend) scheduleOpen(next time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.schedule(next)
	}
}

var quietOnce sync.Once

// quietGnet routes gnet's process-wide logger (pkg/logging, which prints
// to stdout by default, e.g. when epoll_wait fails) to slog.Default at
// debug level, so by default nothing is printed. It runs once, when the
// first gnet backend is created.
func quietGnet() {
	quietOnce.Do(func() { logging.SetDefaultLoggerAndFlusher(slogLogger{}, nil) })
}

type slogLogger struct{}

func (slogLogger) log(level slog.Level, format string, args []any) {
	l, ctx := slog.Default(), context.Background()
	if l.Enabled(ctx, level) {
		l.Log(ctx, level, "gnet: "+fmt.Sprintf(format, args...), "evlib", Name)
	}
}

func (l slogLogger) Debugf(format string, args ...any) { l.log(slog.LevelDebug-4, format, args) }
func (l slogLogger) Infof(format string, args ...any)  { l.log(slog.LevelDebug, format, args) }
func (l slogLogger) Warnf(format string, args ...any)  { l.log(slog.LevelDebug, format, args) }
func (l slogLogger) Errorf(format string, args ...any) { l.log(slog.LevelDebug, format, args) }
func (l slogLogger) Fatalf(format string, args ...any) { l.log(slog.LevelDebug, format, args) }
