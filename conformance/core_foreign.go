//go:build unix

package conformance

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// hostTests are the external-poll tests, run in foreign mode only.
func (s *suite) hostTests() []subtest {
	return []subtest{
		{"ForeignServiceFD", s.testForeignServiceFD},
		{"ForeignAdjustTimeout", s.testForeignAdjustTimeout},
		{"ForeignCallsWhileWaiting", s.testForeignCallsWhileWaiting},
		{"ForeignPollFDOnce", s.testForeignPollFDOnce},
		{"ForeignDestroyLeavesLoop", s.testForeignDestroy},
	}
}

// wakeFD returns the fd announced with ADD_POLL_FD for no connection: the
// core's wake fd, or -1 when the backend has its own waker.
func (h *harness) wakeFD() int {
	for _, e := range h.rec.snapshot() {
		if e.reason == core.ReasonAddPollFD && e.conn == nil {
			return e.fd
		}
	}
	return -1
}

// Checklist 10: ServiceFD on an fd that is not plugloop's returns nil and
// leaves Revents alone; on a handled fd (a connection, the wake fd) it
// zeroes Revents; on a connection closed during service it returns
// ErrClosed and leaves Revents; inside a callback it refuses; after
// destroy it returns ErrDestroyed and leaves Revents.
func (s *suite) testForeignServiceFD(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	th := h.th
	var p [2]int
	require.NoError(t, nonblockPipe(&p))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	_, err := unix.Write(p[1], []byte("app"))
	require.NoError(t, err)
	mine := unix.PollFd{Fd: int32(p[0]), Events: unix.POLLIN, Revents: unix.POLLIN}
	require.NoError(t, th.ServiceFD(&mine), "an fd that is not plugloop's")
	require.Equal(t, int16(unix.POLLIN), mine.Revents, "ServiceFD must leave the Revents of an fd that is not plugloop's")

	fd, peer := unixPair(t)
	c, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	write(t, peer, []byte("ping"))
	pfd := unix.PollFd{Fd: int32(fd), Events: unix.POLLIN, Revents: unix.POLLIN}
	require.NoError(t, th.ServiceFD(&pfd))
	require.Zero(t, pfd.Revents, "ServiceFD must zero the Revents of an fd it handled")
	require.Equal(t, 1, h.rec.count(is(core.ReasonRawRX, c)))
	require.NoError(t, th.Service(0), "forced service: the echo's WRITEABLE")
	require.Equal(t, "ping", string(readFull(t, peer, 4)))

	if wfd := h.wakeFD(); wfd >= 0 {
		ran := false
		require.NoError(t, th.Post(func() { ran = true }))
		w := unix.PollFd{Fd: int32(wfd), Events: unix.POLLIN, Revents: unix.POLLIN}
		require.NoError(t, th.ServiceFD(&w))
		require.Zero(t, w.Revents, "the wake fd is plugloop's: Revents zeroed")
		require.True(t, ran, "ServiceFD of the wake fd runs what was posted")
	}

	var inside error
	require.NoError(t, th.Post(func() {
		q := unix.PollFd{Fd: int32(fd), Events: unix.POLLIN, Revents: unix.POLLIN}
		inside = th.ServiceFD(&q)
	}))
	require.NoError(t, h.service(0))
	require.ErrorIs(t, inside, core.ErrInService, "ServiceFD inside a callback")

	peer.Close()
	pfd = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN, Revents: unix.POLLIN | unix.POLLHUP}
	require.ErrorIs(t, th.ServiceFD(&pfd), core.ErrClosed, "ServiceFD of a connection it closed")
	require.Equal(t, int16(unix.POLLIN|unix.POLLHUP), pfd.Revents, "ServiceFD must leave Revents when it closed the connection")
	require.Equal(t, 1, h.rec.count(is(core.ReasonRawClose, c)))

	h.destroy()
	mine.Revents = unix.POLLIN
	require.ErrorIs(t, th.ServiceFD(&mine), core.ErrDestroyed)
	require.Equal(t, int16(unix.POLLIN), mine.Revents, "ServiceFD after destroy must leave Revents")
	require.ErrorIs(t, th.Service(0), core.ErrDestroyed)
}

// Checklist 13 in the application's loop: ServiceAdjustTimeout never
// exceeds max nor the next timer, is 0 inside a callback and while a
// wakeup is pending, and Service(0) never blocks.
func (s *suite) testForeignAdjustTimeout(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	th := h.th
	require.NoError(t, h.service(0))
	require.Equal(t, time.Duration(-1), th.ServiceAdjustTimeout(-1), "nothing pending, no limit")
	require.Equal(t, 50*time.Millisecond, th.ServiceAdjustTimeout(50*time.Millisecond))
	tm, err := th.AfterFunc(time.Minute, func() {})
	require.NoError(t, err)
	d := th.ServiceAdjustTimeout(-1)
	require.Greater(t, d, time.Duration(0))
	require.LessOrEqual(t, d, time.Minute, "no limit, but a timer a minute away")
	require.True(t, stopTimer(t, tm))
	require.NoError(t, th.CancelService())
	require.Zero(t, th.ServiceAdjustTimeout(time.Second), "a wakeup is pending")
	for range 3 {
		goWithin(t, "Service(0)", func() { err = th.Service(0) })
		require.NoError(t, err)
		goWithin(t, "one pass of the application's loop", func() { err = h.service(0) })
		require.NoError(t, err)
	}
	require.Equal(t, time.Second, th.ServiceAdjustTimeout(time.Second), "the wakeup was served")
	h.start()
	var in time.Duration
	h.do(func() { in = th.ServiceAdjustTimeout(time.Second) })
	require.Zero(t, in, "inside a callback")
	h.rec.verify(t)
}

// Loop-only calls made by another goroutine while the application's loop
// waits take effect there at once: a new fd is watched and served, a
// timer fires on time, a WRITEABLE is delivered — the loop is woken.
func (s *suite) testForeignCallsWhileWaiting(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	h.start()
	fd, peer := unixPair(t)
	var c *core.Conn
	err := h.whileWaiting(func() (err error) { c, err = h.ctx.AdoptFD(fd, ""); return err })
	require.NoError(t, err, "AdoptFD while the application's loop waits")
	require.Contains(t, h.host.loop.Watched(), fd, "the new fd is in the application's set when AdoptFD returns")
	require.NoError(t, roundTrips(peer, 301, 3), "the loop serves the fd adopted while it waited")

	fired := make(chan struct{})
	err = h.whileWaiting(func() (err error) { _, err = h.th.AfterFunc(10*time.Millisecond, func() { close(fired) }); return err })
	require.NoError(t, err)
	waitCh(t, fired, "a timer set while the application's loop waited without limit")

	m := h.rec.mark()
	require.NoError(t, h.whileWaiting(c.CallbackOnWritable))
	h.rec.waitEventFrom(t, "RAW_WRITEABLE requested while the loop waited", m, is(core.ReasonRawWriteable, c))

	var ln *core.Listener
	err = h.whileWaiting(func() (err error) { ln, err = h.ctx.Listen("tcp4", "127.0.0.1:0", ""); return err })
	require.NoError(t, err)
	cc, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer cc.Close()
	require.NoError(t, roundTrips(cc, 302, 3), "a listener opened while the loop waited")
	h.rec.verify(t)
}

// whileWaiting makes the loop-only call f from this goroutine once the
// application's loop waits. waitBlocked sees the loop enter a wait, but a
// wakeup left over from its pass before may end that wait at once, and a
// busy loop rightly refuses a call from another goroutine
// (ErrWrongGoroutine, changing nothing): then f is called again at the
// loop's next wait.
func (h *harness) whileWaiting(f func() error) error {
	h.t.Helper()
	// The application's own traffic would wake the loop into plugloop's
	// code right after a wait the suite counted.
	h.host.quiet.Store(true)
	defer h.host.quiet.Store(false)
	if !exactGoroutine && h.host.rl != nil {
		// Here the core cannot tell a call from another goroutine while
		// the loop is in its code from one of the loop's own, and a
		// RunLoop is counted waiting before its last call into plugloop
		// (ServiceAdjustTimeout): the call is made while the loop runs a
		// task of its own instead, outside plugloop, which the call's
		// wakeup must bring back to serve what it changed.
		return h.host.rl.whileHeld(f)
	}
	for range 100 {
		h.waitBlocked()
		if err := f(); !errors.Is(err, core.ErrWrongGoroutine) {
			return err
		}
	}
	return fmt.Errorf("the application's loop was busy at each of 100 waits: %w", core.ErrWrongGoroutine)
}

// Checklist 33: every fd — the wake fd first, before anything else — is
// added once before any event for it and deleted once; ADD and DEL
// alternate per fd number; the application's set follows at each UNLOCK
// (checked by the suite's loop on every poll-fd sequence).
func (s *suite) testForeignPollFDOnce(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	wfd := h.wakeFD()
	if s.desc.Caps&evlib.CapOwnWaker == 0 {
		require.GreaterOrEqual(t, wfd, 0, "the wake fd must be announced")
		var first *event
		for _, e := range h.rec.snapshot() {
			if isPollReason(e.reason) {
				first = &e
				break
			}
		}
		require.NotNil(t, first)
		require.Equal(t, core.ReasonLockPoll, first.reason)
		require.Equal(t, wfd, first.fd, "the wake fd is the first fd announced")
		require.Contains(t, h.host.loop.Watched(), wfd, "the application watches the wake fd from the start")
	}
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	h.start()
	for i := range 4 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		require.NoError(t, roundTrips(c, uint64(310+i), 2))
		c.Close()
	}
	require.NoError(t, h.ctx.CancelService())
	h.sync()
	h.destroy()
	state := map[int]bool{}
	for _, e := range h.rec.snapshot() {
		switch e.reason {
		case core.ReasonAddPollFD:
			require.False(t, state[e.fd], "%v: ADD_POLL_FD twice without DEL_POLL_FD", e)
			state[e.fd] = true
		case core.ReasonDelPollFD:
			require.True(t, state[e.fd], "%v: DEL_POLL_FD without ADD_POLL_FD", e)
			state[e.fd] = false
		}
	}
	for fd, on := range state {
		require.False(t, on, "fd %d never deleted", fd)
	}
	require.Empty(t, h.host.loop.Watched())
}

// signalState is the process' signal dispositions as far as they can be
// read without changing them.
func signalState() string {
	var b strings.Builder
	for _, sig := range []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGUSR1} {
		if signal.Ignored(sig) {
			b.WriteString(sig.String() + " ignored\n")
		}
	}
	if st, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "SigIgn:") || strings.HasPrefix(l, "SigCgt:") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// Checklist 26 and 27: destroyed from outside or from inside a callback,
// plugloop leaves the application's loop running (the suite's loop goes on
// serving its own pipe after ErrDestroyed), leaves none of its fds in the
// application's set, closes nothing of the application's, and installs no
// signal handler.
func (s *suite) testForeignDestroy(t *testing.T) {
	sigs := signalState()
	for _, inside := range []bool{false, true} {
		name := "Outside"
		if inside {
			name = "InsideCallback"
		}
		t.Run(name, func(t *testing.T) {
			h := s.newHarness(t, echoInfo())
			ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
			require.NoError(t, err)
			h.start()
			c, err := net.Dial("tcp4", ln.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, roundTrips(c, 320, 3))
			own := h.host.pipe
			if inside {
				require.NoError(t, h.th.Post(func() { h.ctx.Destroy() }))
				h.waitDone()
			} else {
				h.waitBlocked()
				h.destroy()
			}
			// The suite's loop checked, before returning, that it still
			// served its own fd with plugloop gone.
			require.Empty(t, h.host.loop.Watched(), "plugloop's fds left in the application's set")
			require.True(t, fdOpen(own[0]) && fdOpen(own[1]), "plugloop closed the application's own fds")
			expectEOF(t, c)
			h.rec.verify(t)
		})
	}
	require.Equal(t, sigs, signalState(), "signal dispositions changed: plugloop must install no signal handler")
}
