package evlib_kqueue

import (
	"errors"
	"log/slog"
	"math"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	R   = evlib.Readable
	W   = evlib.Writable
	HUP = evlib.Hangup
	ERR = evlib.Error
)

func TestTranslate(t *testing.T) {
	for _, tc := range []struct {
		k    kevent
		want evlib.Events
	}{
		{kevent{filter: filterRead}, R},
		{kevent{filter: filterRead, flags: flagEOF}, R | HUP},
		{kevent{filter: filterRead, flags: flagEOF, fflags: uint32(syscall.ECONNRESET)}, R | HUP | ERR},
		{kevent{filter: filterWrite}, W},
		{kevent{filter: filterWrite, flags: flagEOF}, W | HUP},
		{kevent{filter: filterWrite, flags: flagEOF, fflags: uint32(syscall.EPIPE)}, W | HUP | ERR},
		// fflags without EV_EOF is not an error (a filter's own flags).
		{kevent{filter: filterRead, fflags: 1}, R},
	} {
		require.Equal(t, tc.want, translate(&tc.k), "%+v", tc.k)
	}
}

func TestInterestBookkeeping(t *testing.T) {
	var in interest
	flush := func() []kevent {
		c := in.changes(nil)
		in.commit()
		return c
	}

	in.add(5, R)
	require.True(t, in.isWatched(5))
	require.Equal(t, []kevent{add(5, filterRead)}, flush())
	require.True(t, in.registered(5, filterRead))
	require.False(t, in.registered(5, filterWrite))

	in.modify(5, R|W)
	require.Equal(t, []kevent{add(5, filterWrite)}, flush())
	in.modify(5, W)
	require.Equal(t, []kevent{del(5, filterRead)}, flush())

	// Changes that cancel out before the flush cost nothing, and an fd is
	// queued once however often it changes.
	in.modify(5, R)
	in.modify(5, R|W)
	in.modify(5, W)
	require.Len(t, in.dirty, 1)
	require.Empty(t, flush())
	require.False(t, in.pending())

	// Modify to the current interest queues nothing.
	in.modify(5, W)
	require.False(t, in.pending())

	// Add with no interest holds no knote.
	in.add(6, 0)
	require.True(t, in.isWatched(6))
	require.False(t, in.pending())

	// Add then Remove before the flush: nothing.
	in.add(7, R|W)
	in.remove(7, true)
	require.False(t, in.isWatched(7))
	require.Empty(t, flush())

	// Remove in the backend's own kqueue forgets the knotes (close drops
	// them); on a foreign kqueue it deletes them.
	in.remove(5, true)
	require.Empty(t, flush())
	require.Zero(t, in.get(5))
	in.add(8, R|W)
	flush()
	in.remove(8, false)
	require.Equal(t, []kevent{del(8, filterRead), del(8, filterWrite)}, flush())
	require.Zero(t, in.get(8))

	// Remove, close, reuse, Add of the same number before the flush: the
	// new file gets its EV_ADD; no EV_DELETE of the old W (gone with close).
	in.add(9, R|W)
	flush()
	in.remove(9, true)
	in.add(9, R)
	require.Equal(t, []kevent{add(9, filterRead)}, flush())

	// A leftover knote of an unwatched fd is deleted with the next flush.
	in.leftover(10, filterWrite)
	require.Equal(t, []kevent{del(10, filterWrite)}, flush())
	// ... unless the fd is added again first: what it wants is re-added
	// (the number may be a new file), what it does not is deleted.
	in.leftover(11, filterRead)
	in.leftover(11, filterWrite)
	in.add(11, R)
	require.Equal(t, []kevent{add(11, filterRead), del(11, filterWrite)}, flush())
	// Leftovers beyond the table grow it.
	in.leftover(5000, filterRead)
	require.Equal(t, []kevent{del(5000, filterRead)}, flush())

	// failed: after the flush a have bit means the change was an EV_ADD.
	in.add(12, R|W)
	flush()
	require.True(t, in.failed(12, filterWrite))
	require.False(t, in.registered(12, filterWrite))
	require.False(t, in.pending(), "a failed EV_ADD is not retried by itself")
	in.modify(12, R)
	in.modify(12, R|W)
	require.Equal(t, []kevent{add(12, filterWrite)}, flush(), "the next change of interest retries it")
	in.modify(12, R)
	flush()
	require.False(t, in.failed(12, filterWrite), "a failed EV_DELETE")
	require.False(t, in.failed(-1, filterRead))
	require.False(t, in.failed(99999, filterRead))
}

func TestAddModifyRemoveRules(t *testing.T) {
	h := newHarness(t, false)
	h.k.open(3, nil)
	require.ErrorIs(t, h.be.Add(-1, evlib.KindStream, R), evlib.ErrBadFD)
	require.ErrorIs(t, h.be.Add(4, evlib.KindStream, R), evlib.ErrBadFD, "not open")
	require.NoError(t, h.be.Add(3, evlib.KindStream, R))
	require.ErrorIs(t, h.be.Add(3, evlib.KindStream, W), evlib.ErrExist)
	require.ErrorIs(t, h.be.Modify(4, R), evlib.ErrNotWatched)
	require.ErrorIs(t, h.be.Modify(-1, R), evlib.ErrNotWatched)
	require.NoError(t, h.be.Remove(4), "Remove of an unwatched fd")
	require.NoError(t, h.be.Remove(-1))
	require.Equal(t, uint64(2), h.ctr.InterestChanges.Load(), "one fcntl per Add that got that far")

	_, calls := h.poll(t, 0)
	require.Len(t, calls, 1)
	require.Equal(t, []kevent{add(3, filterRead)}, calls[0].changes)
	require.NoError(t, h.be.Modify(3, R))
	_, calls = h.poll(t, 0)
	require.Empty(t, calls[0].changes, "Modify to the current interest changes nothing")

	require.NoError(t, h.be.Close())
	require.NoError(t, h.be.Close())
	require.Equal(t, 1, h.k.closes)
	require.ErrorIs(t, h.be.Add(5, evlib.KindStream, R), evlib.ErrClosed)
	require.ErrorIs(t, h.be.Modify(3, W), evlib.ErrClosed)
	require.NoError(t, h.be.Remove(3))
	_, err := h.be.Poll(0)
	require.ErrorIs(t, err, evlib.ErrClosed)
}

// Interest changes ride on the wait: no system call of their own.
func TestChangesGoWithTheWait(t *testing.T) {
	h := newHarness(t, false)
	for fd := 3; fd < 6; fd++ {
		h.k.open(fd, nil)
		require.NoError(t, h.be.Add(fd, evlib.KindStream, R))
	}
	require.NoError(t, h.be.Modify(4, R|W))
	require.NoError(t, h.be.Modify(5, 0))
	_, calls := h.poll(t, time.Second)
	require.Len(t, calls, 1)
	require.Equal(t, []kevent{add(3, filterRead), add(4, filterRead), add(4, filterWrite)}, calls[0].changes)
	require.Equal(t, time.Second, calls[0].wait)
	require.GreaterOrEqual(t, calls[0].nevents, initialEvents)

	require.NoError(t, h.be.Modify(3, W))
	require.NoError(t, h.be.Modify(4, R))
	_, calls = h.poll(t, time.Second)
	require.Len(t, calls, 1)
	require.Equal(t, []kevent{del(3, filterRead), add(3, filterWrite), del(4, filterWrite)}, calls[0].changes)
	require.Equal(t, uint64(3), h.ctr.InterestChanges.Load(), "only the Adds' fcntl")
	require.Equal(t, uint64(2), h.ctr.Waits.Load())
	require.Empty(t, h.k.applies)
}

func TestReadinessReported(t *testing.T) {
	h := newHarness(t, false)
	a := h.k.open(3, &fakeFile{readable: true, writable: true})
	h.k.open(4, &fakeFile{writable: true})
	require.NoError(t, h.be.Add(3, evlib.KindStream, R|W))
	require.NoError(t, h.be.Add(4, evlib.KindStream, R))
	got, calls := h.poll(t, -1)
	require.Len(t, calls, 1)
	require.Equal(t, time.Duration(-1), calls[0].wait)
	require.Equal(t, []ready{{3, R | W}}, got, "one report per fd, filters merged; fd 4 is writable but wants R only")

	a.eof, a.soErr = true, uint32(syscall.ECONNRESET)
	got, _ = h.poll(t, -1)
	require.Equal(t, []ready{{3, R | W | HUP | ERR}}, got)
}

// A batch is reported in fd order, whatever order the kernel listed it in.
func TestBatchInFDOrder(t *testing.T) {
	h := newHarness(t, false)
	for _, fd := range []int{9, 5, 7} {
		h.k.open(fd, &fakeFile{readable: true})
		require.NoError(t, h.be.Add(fd, evlib.KindStream, R))
	}
	got, calls := h.poll(t, -1)
	require.Len(t, calls, 1)
	require.Equal(t, []ready{{5, R}, {7, R}, {9, R}}, got)
}

func TestBusyLooksWithoutBlockingFirst(t *testing.T) {
	h := newHarness(t, false)
	f := h.k.open(3, &fakeFile{readable: true})
	require.NoError(t, h.be.Add(3, evlib.KindStream, R))

	got, calls := h.poll(t, -1)
	require.Len(t, got, 1)
	require.Len(t, calls, 1)

	// Busy: a non-blocking look that finds more returns it at once.
	got, calls = h.poll(t, -1)
	require.Len(t, got, 1)
	require.Len(t, calls, 1)
	require.Zero(t, calls[0].wait)

	// Busy, and the look finds nothing: then it blocks.
	f.readable = false
	got, calls = h.poll(t, 5*time.Millisecond)
	require.Empty(t, got)
	require.Len(t, calls, 2)
	require.Equal(t, []time.Duration{0, 5 * time.Millisecond}, []time.Duration{calls[0].wait, calls[1].wait})

	// Not busy: one call.
	_, calls = h.poll(t, 5*time.Millisecond)
	require.Len(t, calls, 1)

	// Poll(0) never makes a second call.
	f.readable = true
	h.poll(t, 0)
	f.readable = false
	_, calls = h.poll(t, 0)
	require.Len(t, calls, 1)
}

func TestTimeoutIsNotRounded(t *testing.T) {
	h := newHarness(t, false)
	for _, tc := range []struct{ in, want time.Duration }{
		{300 * time.Microsecond, 300 * time.Microsecond},
		{1, 1},
		{0, 0},
		{-1, -1},
		{-time.Second, -time.Second},
		{1 << 62, maxWait},
	} {
		_, calls := h.poll(t, tc.in)
		require.Len(t, calls, 1)
		require.Equal(t, tc.want, calls[0].wait, "Poll(%v)", tc.in)
	}
}

// Remove sends no EV_DELETE: the close that follows drops the knotes, and
// a delete would fail and cost a kevent call.
func TestRemoveThenCloseSendsNoDelete(t *testing.T) {
	h := newHarness(t, false)
	h.k.open(3, &fakeFile{readable: true})
	require.NoError(t, h.be.Add(3, evlib.KindStream, R|W))
	h.poll(t, 0)
	require.NoError(t, h.be.Remove(3))
	h.k.closeFD(3)
	got, calls := h.poll(t, time.Second)
	require.Empty(t, got)
	require.Len(t, calls, 2, "busy: the look and the wait, no extra call for a failure")
	for _, c := range calls {
		require.Empty(t, c.changes)
		require.Zero(t, c.n)
	}
}

// Remove, close, a new file with the same number, Add: all before the next
// kevent call. The new file must be watched, and nothing fails.
func TestFDReuseBeforeFlush(t *testing.T) {
	h := newHarness(t, false)
	h.k.open(7, &fakeFile{writable: true})
	require.NoError(t, h.be.Add(7, evlib.KindStream, R|W))
	got, _ := h.poll(t, 0)
	require.Equal(t, []ready{{7, W}}, got)

	require.NoError(t, h.be.Remove(7))
	h.k.closeFD(7)
	f := h.k.open(7, &fakeFile{readable: true}) // accept(2) got the number again
	require.NoError(t, h.be.Add(7, evlib.KindStream, R))
	got, calls := h.poll(t, time.Second)
	require.Len(t, calls, 1)
	require.Equal(t, []kevent{add(7, filterRead)}, calls[0].changes)
	require.Equal(t, []ready{{7, R}}, got)
	require.True(t, h.k.has(7, filterRead))
	require.False(t, h.k.has(7, filterWrite))
	f.readable = false

	// The same, and the new fd is added before any Poll saw the old one.
	h.k.open(8, nil)
	require.NoError(t, h.be.Add(8, evlib.KindStream, R|W))
	require.NoError(t, h.be.Remove(8))
	h.k.closeFD(8)
	h.k.open(8, &fakeFile{writable: true})
	require.NoError(t, h.be.Add(8, evlib.KindStream, W))
	got, calls = h.poll(t, time.Second)
	require.Len(t, calls, 1)
	require.Equal(t, []kevent{add(8, filterWrite)}, calls[0].changes)
	require.Equal(t, []ready{{8, W}}, got)
}

// A removed fd that stays open keeps its knotes until they fire; then they
// are dropped, and deleted with the next kevent call.
func TestLeftoverKnotesDeletedWhenTheyFire(t *testing.T) {
	h := newHarness(t, false)
	h.k.open(9, &fakeFile{readable: true, writable: true})
	require.NoError(t, h.be.Add(9, evlib.KindStream, R|W))
	h.poll(t, 0)
	require.NoError(t, h.be.Remove(9)) // and not closed

	// Busy: the non-blocking look finds only the leftovers, so the wait
	// that follows in the same Poll deletes them.
	got, calls := h.poll(t, time.Second)
	require.Empty(t, got, "events of a removed fd are not reported")
	require.Len(t, calls, 2)
	require.Empty(t, calls[0].changes)
	require.Equal(t, 2, calls[0].n)
	require.Equal(t, []kevent{del(9, filterRead), del(9, filterWrite)}, calls[1].changes)
	require.Equal(t, time.Second, calls[1].wait)
	require.False(t, h.k.has(9, filterRead))
	require.False(t, h.k.has(9, filterWrite))

	// Not busy: the wait that finds only leftovers returns (Poll may
	// return early), and the next call deletes them.
	f := h.k.open(9, &fakeFile{readable: true})
	require.NoError(t, h.be.Add(9, evlib.KindStream, R))
	h.poll(t, 0)
	f.readable = false
	h.poll(t, 0)
	require.NoError(t, h.be.Remove(9))
	f.readable = true
	_, calls = h.poll(t, time.Second)
	require.Len(t, calls, 1)
	require.Equal(t, 1, calls[0].n)
	_, calls = h.poll(t, time.Second)
	require.Equal(t, []kevent{del(9, filterRead)}, calls[0].changes)
	require.False(t, h.k.has(9, filterRead))

	// The same fd removed and added again with less interest: the knote it
	// no longer wants fires once, is dropped and deleted.
	f.writable = true
	require.NoError(t, h.be.Add(9, evlib.KindStream, R|W))
	h.poll(t, 0)
	require.NoError(t, h.be.Remove(9))
	require.NoError(t, h.be.Add(9, evlib.KindStream, R))
	got, calls = h.poll(t, time.Second)
	require.Equal(t, []kevent{add(9, filterRead)}, calls[0].changes)
	require.Equal(t, []ready{{9, R}}, got, "the leftover W is not reported")
	_, calls = h.poll(t, 0)
	require.Equal(t, []kevent{del(9, filterWrite)}, calls[0].changes)
	require.False(t, h.k.has(9, filterWrite))
}

// A failed EV_DELETE (its fd was closed meanwhile) makes the kernel return
// without waiting; Poll ignores the failure and waits in a second call.
func TestFailedDeleteIgnoredAndWaitFollows(t *testing.T) {
	h := newHarness(t, false)
	h.k.open(9, &fakeFile{readable: true})
	require.NoError(t, h.be.Add(9, evlib.KindStream, R))
	h.poll(t, 0)
	require.NoError(t, h.be.Remove(9))
	h.poll(t, 0) // the leftover fires: EV_DELETE queued
	h.k.closeFD(9)

	got, calls := h.poll(t, time.Second)
	require.Empty(t, got)
	require.Len(t, calls, 2)
	require.Equal(t, []kevent{del(9, filterRead)}, calls[0].changes)
	require.Equal(t, 1, calls[0].n, "the EBADF came back in the event list")
	require.Empty(t, calls[1].changes)
	require.Equal(t, time.Second, calls[1].wait, "the second call waits the whole timeout")
}

// A failed EV_ADD leaves a watched fd unwatched by the kernel: it is
// reported as an Error on that fd.
func TestFailedAddReportedAsError(t *testing.T) {
	h := newHarness(t, false)
	f := h.k.open(4, &fakeFile{readable: true})
	h.k.open(5, &fakeFile{readable: true})
	require.NoError(t, h.be.Add(4, evlib.KindFile, R))
	require.NoError(t, h.be.Add(5, evlib.KindStream, R))
	h.poll(t, 0)

	f.refuse = map[filter]syscall.Errno{filterWrite: syscall.EPIPE}
	require.NoError(t, h.be.Modify(4, R|W))
	got, calls := h.poll(t, time.Second)
	require.Len(t, calls, 1, "the failure is something to report: no second call")
	require.Equal(t, []ready{{4, ERR}}, got)
	require.False(t, h.b.in.registered(4, filterWrite))

	// The next change of interest tries again.
	f.refuse = nil
	require.NoError(t, h.be.Modify(4, R))
	require.NoError(t, h.be.Modify(4, R|W))
	_, calls = h.poll(t, time.Second)
	require.Equal(t, []kevent{add(4, filterWrite)}, calls[0].changes)

	// An fd closed before it was removed (against the contract) fails its
	// EV_ADD with EBADF: an Error too.
	h.k.open(6, nil)
	require.NoError(t, h.be.Add(6, evlib.KindStream, R))
	h.k.closeFD(6)
	got, _ = h.poll(t, time.Second)
	require.Equal(t, []ready{{6, ERR}}, got)
}

// The event list always has room for every change to fail; else the kernel
// would fail the call and drop the changes after the first failure.
func TestEventListHasRoomForEveryChange(t *testing.T) {
	h := newHarness(t, false)
	const n = 3 * initialEvents
	for fd := 10; fd < 10+n; fd++ {
		h.k.open(fd, nil)
		require.NoError(t, h.be.Add(fd, evlib.KindStream, R|W))
	}
	for fd := 10; fd < 10+n; fd++ {
		h.k.closeFD(fd) // every EV_ADD will fail
	}
	got, calls := h.poll(t, time.Second)
	require.Len(t, calls, 1)
	require.Len(t, calls[0].changes, 2*n)
	require.GreaterOrEqual(t, calls[0].nevents, 2*n)
	require.Len(t, got, n)
	for i, r := range got {
		require.Equal(t, ready{10 + i, ERR}, r)
	}
}

func TestEventListGrows(t *testing.T) {
	h := newHarness(t, false)
	for fd := 10; fd < 10+2*initialEvents; fd++ {
		h.k.open(fd, &fakeFile{readable: true})
		require.NoError(t, h.be.Add(fd, evlib.KindStream, R))
	}
	got, calls := h.poll(t, 0)
	require.Len(t, got, 2*initialEvents)
	require.Equal(t, 2*initialEvents, calls[0].nevents, "sized for the changes")
	got, calls = h.poll(t, 0)
	require.Len(t, got, 2*initialEvents)
	require.Equal(t, 4*initialEvents, calls[0].nevents, "a full list doubles")
	got, calls = h.poll(t, 0)
	require.Len(t, got, 2*initialEvents)
	require.Equal(t, 4*initialEvents, calls[0].nevents)
}

// The core may remove or change other fds while it handles one; collected
// events for them are dropped or masked.
func TestDispatchFollowsTheCore(t *testing.T) {
	h := newHarness(t, false)
	var files []*fakeFile
	for fd := 3; fd <= 5; fd++ {
		files = append(files, h.k.open(fd, &fakeFile{readable: true}))
		require.NoError(t, h.be.Add(fd, evlib.KindStream, R))
	}
	h.sink.on = func(fd int, ev evlib.Events) {
		if fd == 3 {
			require.NoError(t, h.be.Remove(4))
			require.NoError(t, h.be.Modify(5, W))
		}
	}
	got, _ := h.poll(t, 0)
	require.Equal(t, []ready{{3, R}}, got)
	h.sink.on = nil
	files[0].readable = false
	// Removing fd 4 during the batch queued nothing that would fail once
	// the core closes it.
	h.k.closeFD(4)
	_, calls := h.poll(t, time.Second)
	require.Equal(t, []kevent{del(5, filterRead), add(5, filterWrite)}, calls[0].changes)
	require.Len(t, calls, 2, "busy: a look, then the wait; no failure")
}

func TestInterruptedWaitAppliedTheChanges(t *testing.T) {
	h := newHarness(t, false)
	h.k.open(3, nil)
	require.NoError(t, h.be.Add(3, evlib.KindStream, R))
	h.k.failNext = syscall.EINTR
	n, err := h.be.Poll(time.Second)
	require.NoError(t, err)
	require.Zero(t, n)
	require.True(t, h.k.has(3, filterRead))
	_, calls := h.poll(t, 0)
	require.Empty(t, calls[0].changes, "committed")
}

func TestFailedCallResendsTheChanges(t *testing.T) {
	h := newHarness(t, false)
	h.k.open(3, nil)
	require.NoError(t, h.be.Add(3, evlib.KindStream, R))
	h.k.failNext = syscall.ENOMEM
	_, err := h.be.Poll(time.Second)
	require.ErrorIs(t, err, syscall.ENOMEM)
	_, calls := h.poll(t, 0)
	require.Equal(t, []kevent{add(3, filterRead)}, calls[0].changes)
	require.True(t, h.k.has(3, filterRead))
}

func TestWake(t *testing.T) {
	h := newHarness(t, true)
	w, ok := h.be.(evlib.Waker)
	require.True(t, ok, "a kqueue of its own with EVFILT_USER has a waker")
	f := h.k.open(3, nil)
	require.NoError(t, h.be.Add(3, evlib.KindStream, R))

	require.NoError(t, w.Wake())
	require.Equal(t, uint64(1), h.ctr.Wakes.Load())
	got, calls := h.poll(t, -1)
	require.Empty(t, got, "the user event is not reported to the Sink")
	require.Len(t, calls, 1, "the wakeup ends the Poll")
	require.Equal(t, []kevent{add(3, filterRead)}, calls[0].changes)

	// A wakeup found by the non-blocking look after a busy batch ends the
	// Poll too.
	f.readable = true
	h.poll(t, -1)
	f.readable = false
	require.NoError(t, w.Wake())
	got, calls = h.poll(t, -1)
	require.Empty(t, got)
	require.Len(t, calls, 1)
	require.Zero(t, calls[0].wait)

	require.NoError(t, h.be.Close())
	require.NoError(t, w.Wake(), "after Close: a no-op")
	require.Equal(t, 2, h.k.triggers)
}

func TestNoWakerWithoutUserEvent(t *testing.T) {
	h := newHarness(t, false)
	_, ok := h.be.(evlib.Waker)
	require.False(t, ok)
}

func TestWakeRacesClose(t *testing.T) {
	for range 20 {
		h := newHarness(t, true)
		w := h.be.(evlib.Waker)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for range 100 {
					assert.NoError(t, w.Wake())
				}
			}()
		}
		close(start)
		require.NoError(t, h.be.Close())
		h.k.mu.Lock()
		after := h.k.triggers
		h.k.mu.Unlock()
		wg.Wait()
		require.Equal(t, after, h.k.triggers, "no trigger after Close returned")
	}
}

func newForeign(t *testing.T, foreign any, attach func(int) (kernel, error)) (evlib.Backend, error) {
	return newBackend(evlib.Config{Sink: &recorder{}, Counters: &evlib.Counters{}, Logger: slog.New(slog.DiscardHandler), Foreign: foreign},
		func() (kernel, error) { t.Fatal("open with Foreign"); return nil, nil },
		attach, true)
}

func TestForeign(t *testing.T) {
	k := newFake()
	var attached int
	be, err := newForeign(t, 42, func(kq int) (kernel, error) { attached = kq; return k, nil })
	require.NoError(t, err)
	require.Equal(t, 42, attached)
	_, ok := be.(evlib.Waker)
	require.False(t, ok, "no waker on a foreign kqueue: the core's pipe is one of the app's fds")
	b := be.(*Backend)

	_, err = be.Poll(0)
	require.ErrorIs(t, err, evlib.ErrAppDriven)

	// Changes go out at once, never through a wait.
	k.open(3, nil)
	require.NoError(t, be.Add(3, evlib.KindStream, R))
	require.NoError(t, be.Modify(3, R|W))
	require.NoError(t, be.Modify(3, R|W))
	require.NoError(t, be.Remove(3))
	require.Equal(t, [][]kevent{
		{add(3, filterRead)},
		{add(3, filterWrite)},
		{del(3, filterRead), del(3, filterWrite)},
	}, k.applies)
	require.Equal(t, uint64(3), b.ctr.InterestChanges.Load())
	require.Empty(t, k.calls)
	require.Equal(t, 1, k.checks, "the fd checked once, as the fd table grew for it")
	require.False(t, k.has(3, filterRead))
	require.NoError(t, be.Remove(3))

	// A bad fd fails Add, and is not watched.
	k.applies = nil
	require.ErrorIs(t, be.Add(4, evlib.KindStream, R), evlib.ErrBadFD)
	require.ErrorIs(t, be.Add(4, evlib.KindStream, R), evlib.ErrBadFD, "not ErrExist")
	// One far beyond the table fails before the table grows for it.
	size := len(b.in.state)
	require.ErrorIs(t, be.Add(math.MaxInt32, evlib.KindStream, R), evlib.ErrBadFD)
	require.Equal(t, size, len(b.in.state), "the fd table grew for an fd that is not open")
	// With no interest no EV_ADD would fail for it: the fd is asked.
	require.ErrorIs(t, be.Add(4, evlib.KindStream, 0), evlib.ErrBadFD, "a closed fd with interest 0")
	k.open(4, nil)
	require.NoError(t, be.Add(4, evlib.KindStream, 0), "once open it can be added")
	require.NoError(t, be.Remove(4))

	// A filter that cannot be added fails Add, and what went through is
	// taken back.
	k.applies = nil
	k.open(5, &fakeFile{refuse: map[filter]syscall.Errno{filterWrite: syscall.EPIPE}})
	err = be.Add(5, evlib.KindFile, R|W)
	require.ErrorIs(t, err, syscall.EPIPE)
	require.Equal(t, [][]kevent{{add(5, filterRead), add(5, filterWrite)}, {del(5, filterRead)}}, k.applies)
	require.False(t, k.has(5, filterRead))
	require.False(t, b.in.isWatched(5))

	// A failed change of interest is an error of Modify.
	k.open(6, &fakeFile{refuse: map[filter]syscall.Errno{filterWrite: syscall.EPIPE}})
	require.NoError(t, be.Add(6, evlib.KindFile, R))
	require.ErrorIs(t, be.Modify(6, R|W), syscall.EPIPE)

	require.NoError(t, be.Close())
	require.Zero(t, k.closes, "the application's kqueue stays open")
}

func TestForeignRejected(t *testing.T) {
	attach := func(int) (kernel, error) { return nil, errors.New("not a kqueue") }
	_, err := newForeign(t, "kq", attach)
	require.ErrorIs(t, err, evlib.ErrForeignUnsupported)
	_, err = newForeign(t, -1, attach)
	require.ErrorIs(t, err, evlib.ErrBadFD)
	_, err = newForeign(t, 5, attach)
	require.EqualError(t, err, "not a kqueue")
}
