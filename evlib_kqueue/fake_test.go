package evlib_kqueue

import (
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// fakeFile is an open file as the fake kernel sees it.
type fakeFile struct {
	readable, writable, eof bool
	soErr                   uint32                   // the socket error EV_EOF reports in fflags
	refuse                  map[filter]syscall.Errno // EV_ADD of this filter fails so
}

type knote struct {
	fd   int
	f    filter
	file *fakeFile
}

// call is one kevent call as the fake kernel saw it.
type call struct {
	changes []kevent
	nevents int
	wait    time.Duration
	n       int
}

// fakeKernel models one kqueue by the rules of kevent(2) as the BSD kernels
// implement them (kern_event.c): changes are applied in order; a failed
// change is copied to the event list with EV_ERROR and the errno in data if
// there is room, else the call fails with that errno and the changes after
// it are dropped; if any change failed, the call returns the failures
// without collecting events or waiting. close(2) drops the fd's knotes.
// Readiness is level triggered; the user event is EV_CLEAR.
type fakeKernel struct {
	mu       sync.Mutex
	fds      map[int]*fakeFile
	knotes   []knote
	fired    bool // the user event was triggered and not yet collected
	calls    []call
	applies  [][]kevent
	triggers int
	checks   int
	closes   int
	failNext error // the next kevent call fails so (EINTR after applying the changes)
}

func newFake() *fakeKernel { return &fakeKernel{fds: map[int]*fakeFile{}} }

func (k *fakeKernel) open(fd int, f *fakeFile) *fakeFile {
	k.mu.Lock()
	defer k.mu.Unlock()
	if f == nil {
		f = &fakeFile{}
	}
	k.fds[fd] = f
	return f
}

// closeFD is close(2): the fd's knotes go with it.
func (k *fakeKernel) closeFD(fd int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.fds, fd)
	k.knotes = slices.DeleteFunc(k.knotes, func(n knote) bool { return n.fd == fd })
}

func (k *fakeKernel) has(fd int, f filter) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.find(fd, f) >= 0
}

func (k *fakeKernel) find(fd int, f filter) int {
	return slices.IndexFunc(k.knotes, func(n knote) bool { return n.fd == fd && n.f == f })
}

func (k *fakeKernel) change(c kevent) syscall.Errno {
	file := k.fds[c.ident]
	if file == nil {
		return syscall.EBADF
	}
	i := k.find(c.ident, c.filter)
	switch {
	case c.flags&flagAdd != 0:
		if e := file.refuse[c.filter]; e != 0 {
			return e
		}
		if i < 0 {
			k.knotes = append(k.knotes, knote{c.ident, c.filter, file})
		}
	case c.flags&flagDelete != 0:
		if i < 0 {
			return syscall.ENOENT
		}
		k.knotes = slices.Delete(k.knotes, i, i+1)
	default:
		return syscall.EINVAL
	}
	return 0
}

func (k *fakeKernel) kevent(changes, events []kevent, wait time.Duration) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := call{changes: slices.Clone(changes), nevents: len(events), wait: wait}
	defer func() { k.calls = append(k.calls, c) }()
	fail := k.failNext
	k.failNext = nil
	if fail != nil && fail != syscall.EINTR {
		return 0, fail // before the changes: none applied
	}
	nerr := 0
	for _, ch := range changes {
		if e := k.change(ch); e != 0 {
			if nerr == len(events) {
				return 0, e // no room: the rest of the changes are dropped
			}
			events[nerr] = kevent{ident: ch.ident, filter: ch.filter, flags: flagError, data: int64(e)}
			nerr++
		}
	}
	if nerr > 0 {
		c.n = nerr
		return nerr, nil
	}
	if fail != nil {
		return 0, fail // EINTR: a signal during the wait, after the changes
	}
	n := 0
	for _, kn := range k.knotes {
		if n == len(events) {
			break
		}
		f := kn.file
		ready := f.eof || (kn.f == filterRead && f.readable) || (kn.f == filterWrite && f.writable)
		if !ready {
			continue
		}
		e := kevent{ident: kn.fd, filter: kn.f}
		if f.eof {
			e.flags, e.fflags = flagEOF, f.soErr
		}
		events[n] = e
		n++
	}
	if k.fired && n < len(events) {
		events[n] = kevent{ident: 1, filter: filterUser}
		k.fired = false
		n++
	}
	c.n = n
	return n, nil // with nothing ready, the wait "times out" at once
}

func (k *fakeKernel) apply(changes []kevent, errs []error) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.applies = append(k.applies, slices.Clone(changes))
	for i, c := range changes {
		if e := k.change(c); e != 0 {
			errs[i] = e
		}
	}
	return 1, nil
}

func (k *fakeKernel) trigger() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.triggers++
	k.fired = true
	return nil
}

func (k *fakeKernel) checkFD(fd int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.checks++
	if k.fds[fd] == nil {
		return syscall.EBADF
	}
	return nil
}

func (k *fakeKernel) close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closes++
	return nil
}

// takeCalls returns the kevent calls since the last take.
func (k *fakeKernel) takeCalls() []call {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.calls
	k.calls = nil
	return c
}

// recorder is a Sink that records reports and can act on them, as the core
// does.
type recorder struct {
	got []ready
	on  func(fd int, ev evlib.Events)
}

func (r *recorder) Ready(fd int, ev evlib.Events) {
	r.got = append(r.got, ready{fd, ev})
	if r.on != nil {
		r.on(fd, ev)
	}
}

func (r *recorder) take() []ready {
	g := r.got
	r.got = nil
	return g
}

type harness struct {
	be   evlib.Backend
	b    *Backend
	k    *fakeKernel
	sink *recorder
	ctr  *evlib.Counters
}

func newHarness(t *testing.T, wakeable bool) *harness {
	t.Helper()
	h := &harness{k: newFake(), sink: &recorder{}, ctr: &evlib.Counters{}}
	be, err := newBackend(evlib.Config{Sink: h.sink, Counters: h.ctr, Logger: slog.New(slog.DiscardHandler)},
		func() (kernel, error) { return h.k, nil },
		func(int) (kernel, error) { t.Fatal("attach without Foreign"); return nil, nil },
		wakeable)
	require.NoError(t, err)
	h.be = be
	switch b := be.(type) {
	case *Backend:
		h.b = b
	case waking:
		h.b = b.Backend
	default:
		t.Fatalf("New returned %T", be)
	}
	return h
}

// poll runs one Poll and returns what it reported and the kevent calls it made.
func (h *harness) poll(t *testing.T, timeout time.Duration) ([]ready, []call) {
	t.Helper()
	h.k.takeCalls()
	n, err := h.be.Poll(timeout)
	require.NoError(t, err)
	got := h.sink.take()
	require.Len(t, got, n, "Poll's count")
	return got, h.k.takeCalls()
}

func add(fd int, f filter) kevent { return kevent{ident: fd, filter: f, flags: flagAdd} }
func del(fd int, f filter) kevent { return kevent{ident: fd, filter: f, flags: flagDelete} }
