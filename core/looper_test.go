//go:build linux

package core_test

import (
	"sync"
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_epoll"
	"github.com/plugloop/plugloop/internal/sys"
)

// looper is the epoll backend driven the way a library that owns its loop
// drives the core (evlib.Looper), so the whole suite covers Run's Loop path.
type looper struct {
	evlib.Backend
	mu     sync.RWMutex // fences Wake against Close
	closed bool
	waker  sys.Waker
}

// Wake may race with Close (evlib.Waker): after it, it must not write to
// a descriptor number the process may have reused.
func (l *looper) Wake() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil
	}
	return l.waker.Signal()
}

func (l *looper) Loop(p evlib.Passer) error {
	for {
		next, stop := p.Pass()
		if stop {
			return nil
		}
		if _, err := l.Poll(next); err != nil {
			return err
		}
	}
}

func (l *looper) Close() error {
	l.mu.Lock()
	l.closed = true
	l.waker.Close()
	l.mu.Unlock()
	return l.Backend.Close()
}

// readyFilter drains the looper's own wake fd and passes the rest on.
type readyFilter struct {
	evlib.Sink
	waker *sys.Waker
}

func (f readyFilter) Ready(fd int, ev evlib.Events) {
	if fd == f.waker.R {
		f.waker.Drain()
		return
	}
	f.Sink.Ready(fd, ev)
}

func TestLooperConformance(t *testing.T) {
	conformance.RunBackend(t, evlib.Descriptor{
		Name: "test-looper",
		Caps: evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapFiles | evlib.CapOwnWaker | evlib.CapHangupWithoutInterest |
			evlib.CapUnixReset,
		New: func(cfg evlib.Config) (evlib.Backend, error) {
			l := &looper{}
			w, err := sys.NewWaker()
			if err != nil {
				return nil, err
			}
			l.waker = w
			cfg.Sink = readyFilter{cfg.Sink, &l.waker}
			be, err := evlib_epoll.New(cfg)
			if err != nil {
				w.Close()
				return nil, err
			}
			if err := be.Add(w.R, evlib.KindWake, evlib.Readable); err != nil {
				w.Close()
				be.Close()
				return nil, err
			}
			l.Backend = be
			return l, nil
		},
	})
}
