//go:build unix

package conformance

import (
	"errors"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/goid"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// shortTempDir returns a directory with a path short enough for a unix
// socket address, removed at the end of the test.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "plc")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// afterDestroyOnly checks that from sequence number from on the only
// callbacks are the poll-fd ones, RAW_CLOSE with ErrDestroyed and
// PROTOCOL_DESTROY, and that every connection in conns got its RAW_CLOSE
// there.
func afterDestroyOnly(t *testing.T, h *harness, from int, conns ...*core.Conn) {
	t.Helper()
	evs := h.rec.snapshot()
	require.LessOrEqual(t, from, len(evs))
	closed := map[*core.Conn]bool{}
	for _, e := range evs[from:] {
		switch {
		case isPollReason(e.reason), e.reason == core.ReasonProtocolDestroy:
		case e.reason == core.ReasonRawClose:
			require.ErrorIs(t, e.err, core.ErrDestroyed, "%v", e)
			closed[e.conn] = true
		default:
			t.Fatalf("conformance: %v delivered after Destroy was called", e)
		}
	}
	for _, c := range conns {
		require.True(t, closed[c], "fd %d got no RAW_CLOSE after Destroy", c.FD())
	}
	require.Equal(t, core.ReasonProtocolDestroy, evs[len(evs)-1].reason, "PROTOCOL_DESTROY must come last")
}

// Checklist 28: Destroy called inside a callback (RAW_RX, a posted
// function, a timer) is deferred: the callback goes on with its
// connections intact, then every connection gets RAW_CLOSE with
// ErrDestroyed and nothing else is delivered, PROTOCOL_DESTROY comes last
// for every protocol, Run returns nil and Done is closed.
func (s *suite) testDestroyInside(t *testing.T) {
	type result struct {
		err1, err2 error
		aClosed    bool
		bClosed    bool
		cbw        error
		mark       int
		adoptErr   error // AdoptFD inside RAW_CLOSE during destruction
		listenErr  error // Listen likewise
		tried      bool
		secondRan  bool // a function queued behind the destroying one ran
	}
	run := func(t *testing.T, how string) {
		var res result
		var h *harness
		var a, b *core.Conn
		spare, sparePeer := unixPair(t)
		defer sparePeer.Close()
		destroy := func() {
			res.err1 = h.ctx.Destroy()
			res.err2 = h.ctx.Destroy()
			res.aClosed, res.bClosed = a.Closed(), b.Closed()
			res.cbw = a.CallbackOnWritable()
			res.mark = h.rec.mark()
		}
		cb := func(ev core.Event) error {
			if ev.Reason == core.ReasonRawRX && how == "RX" && res.mark == 0 {
				destroy()
			}
			if ev.Reason == core.ReasonRawClose && !res.tried {
				// Nothing new joins a context being torn down.
				res.tried = true
				_, res.adoptErr = h.ctx.AdoptFD(spare, "p1")
				_, res.listenErr = h.ctx.Listen("tcp4", "127.0.0.1:0", "")
			}
			return nil
		}
		h = s.newHarness(t, core.Info{Protocols: []core.Protocol{
			{Name: "p1", Callback: cb},
			{Name: "p2", Callback: func(core.Event) error { return nil }},
		}})
		_, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "p2")
		require.NoError(t, err)
		fdA, peerA := unixPair(t)
		fdB, peerB := unixPair(t)
		a, err = h.ctx.AdoptFD(fdA, "p1")
		require.NoError(t, err)
		b, err = h.ctx.AdoptFD(fdB, "p2")
		require.NoError(t, err)
		h.start()
		switch how {
		case "RX":
			// Both ready in one batch: whichever is first, b must get
			// no RAW_RX once a's callback destroyed the context.
			h.do(func() {
				peerB.Write([]byte("b"))
				peerA.Write([]byte("a"))
			})
		case "Post":
			// Both run in one later pass: the second must be dropped.
			var err2 error
			h.do(func() {
				err = h.th.Post(destroy)
				err2 = h.th.Post(func() { res.secondRan = true })
			})
			require.NoError(t, err)
			require.NoError(t, err2)
		case "Timer":
			// Both due in the same pass (almost always): once the first
			// destroyed the context, the second must not run.
			var err2 error
			h.do(func() {
				_, err = h.th.AfterFunc(time.Millisecond, destroy)
				_, err2 = h.th.AfterFunc(time.Millisecond, func() { res.secondRan = true })
			})
			require.NoError(t, err)
			require.NoError(t, err2)
		}
		h.waitDone()
		require.NoError(t, res.err1)
		require.NoError(t, res.err2, "second Destroy")
		require.False(t, res.aClosed, "a closed before the callback that destroyed returned")
		require.False(t, res.bClosed, "b closed before the callback that destroyed returned")
		require.NoError(t, res.cbw, "a loop-only call inside the callback after Destroy")
		require.NotZero(t, res.mark)
		require.False(t, res.secondRan, "a function queued behind the one that called Destroy ran")
		afterDestroyOnly(t, h, res.mark, a, b)
		require.ErrorIs(t, res.adoptErr, core.ErrDestroyed, "AdoptFD inside RAW_CLOSE during destruction")
		require.ErrorIs(t, res.listenErr, core.ErrDestroyed, "Listen inside RAW_CLOSE during destruction")
		fdCloseOrFail(t, spare)
		expectEOF(t, peerA)
		expectEOF(t, peerB)
	}
	for _, how := range []string{"RX", "Post", "Timer"} {
		t.Run(how, func(t *testing.T) { run(t, how) })
	}
}

// Checklist 28, 29 and 31: Destroy from another goroutine while Run
// blocks: connections close with ErrDestroyed, Run returns nil, Done is
// closed; a second Destroy is fine; every call after it returns
// ErrDestroyed and takes nothing from the caller.
func (s *suite) testDestroyOutside(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	fd, peer := unixPair(t)
	a, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	tm, err := h.th.AfterFunc(time.Hour, func() {})
	require.NoError(t, err)
	h.start()
	require.NoError(t, roundTrips(peer, 71, 3))
	h.waitBlocked()
	m := h.rec.mark()
	h.destroy()
	require.NoError(t, h.ctx.Destroy(), "second Destroy")
	afterDestroyOnly(t, h, m, a)
	expectEOF(t, peer)

	base := openFDs()
	gone := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, core.ErrDestroyed, "%s after Destroy", what)
	}
	gone("Context.CancelService", h.ctx.CancelService())
	gone("Thread.CancelService", h.th.CancelService())
	gone("Thread.Post", h.th.Post(func() { t.Error("posted function ran after Destroy") }))
	gone("Conn.CallbackOnWritable", a.CallbackOnWritable())
	_, err = a.Write([]byte("x"))
	gone("Conn.Write", err)
	gone("Conn.Close", a.Close())
	gone("Conn.RxFlowControl", a.RxFlowControl(true))
	gone("Conn.SetTimer", a.SetTimer(time.Millisecond))
	gone("Conn.SetTimeout", a.SetTimeout(time.Millisecond))
	gone("Listener.Close", ln.Close())
	_, err = h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	gone("Context.Listen", err)
	_, err = h.th.AfterFunc(time.Millisecond, func() {})
	gone("Thread.AfterFunc", err)
	gone("Timer.Reset", tm.Reset(time.Millisecond))
	stopped, err := tm.Stop()
	gone("Timer.Stop", err)
	require.False(t, stopped)
	gone("Context.CallbackOnWritableAll", h.ctx.CallbackOnWritableAll(""))
	gone("Thread.Service", h.th.Service(0))
	gone("Context.Run", h.ctx.Run(t.Context()))
	require.Zero(t, h.th.ServiceAdjustTimeout(time.Second))
	fd2, peer2 := unixPair(t)
	_, err = h.ctx.AdoptFD(fd2, "")
	gone("Context.AdoptFD", err)
	fdCloseOrFail(t, fd2)
	peer2.Close()
	srv, cli := tcpPair(t)
	_, err = h.ctx.AdoptConn(srv, "")
	gone("Context.AdoptConn", err)
	write(t, srv, []byte("mine"))
	require.Equal(t, "mine", string(readFull(t, cli, 4)))
	srv.Close()
	cli.Close()
	checkFDs(t, base)
}

// Checklist 28: Destroy with nobody running the loop completes before it
// returns, on the calling goroutine.
func (s *suite) testDestroyIdle(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	_, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	fd, peer := unixPair(t)
	a, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	m := h.rec.mark()
	require.NoError(t, h.ctx.Destroy())
	select {
	case <-h.ctx.Done():
	default:
		t.Fatal("conformance: Destroy of a context nobody runs returned before destruction completed")
	}
	afterDestroyOnly(t, h, m, a)
	me := goid.ID()
	for _, e := range h.rec.snapshot()[m:] {
		require.Equal(t, me, e.g, "%v not on the goroutine that called Destroy", e)
	}
	expectEOF(t, peer)
	require.ErrorIs(t, h.ctx.Run(t.Context()), core.ErrDestroyed)
}

// Checklist 30: core.New failing once some service threads exist (here
// the last thread's backend refuses a Config.Foreign it does not know)
// returns the backend's error and leaves nothing behind: no callback ran,
// no descriptor or goroutine of the earlier threads remains, and in
// foreign mode the application's loops hold nothing of plugloop's.
func (s *suite) testNewFailsMidway(t *testing.T) {
	type notALoop struct{ _ int }
	h := &harness{t: t, harnessState: &harnessState{rec: newRecorder([]string{"p"}), runErr: make(chan error, 1)}}
	info := core.Info{EventLib: s.name, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		h.rec.enter(ev)
		defer h.rec.exit(ev)
		return nil
	}}}}
	threads := 3
	if s.host != nil {
		// One application loop, the loop every host has, then the
		// thread that fails.
		info.CountThreads = 1
		h.setupHost(s.host, &info)
		threads = 2
	}
	info.CountThreads = threads
	info.Foreign = append(info.Foreign, make([]any, threads-1-len(info.Foreign))...)
	info.Foreign = append(info.Foreign, notALoop{})
	baseFDs, baseG := openFDs(), runtime.NumGoroutine()

	ctx, err := core.New(info)
	require.ErrorIs(t, err, evlib.ErrForeignUnsupported, "core.New with thread %d's Foreign of a type no backend knows", threads-1)
	require.Nil(t, ctx)
	require.Empty(t, h.rec.snapshot(), "callbacks from a core.New that failed")
	for _, r := range h.hosts {
		require.Empty(t, r.loop.Watched(), "plugloop's fds left in the application's loop of thread %d", r.thread)
	}
	checkGoroutines(t, baseG)
	checkFDs(t, baseFDs)
}

// Listening on tcp4, tcp6 (where ::1 exists) and unix sockets, serving the
// named protocol; a unix socket's file is removed when its listener closes
// and when the context is destroyed.
func (s *suite) testListen(t *testing.T) {
	info := core.Info{Protocols: []core.Protocol{
		{Name: "first", Callback: func(core.Event) error { return nil }},
		{Name: "echo", Callback: echoCallback},
	}}
	serve := func(t *testing.T, network, addr string) {
		h := s.newHarness(t, info)
		ln, err := h.ctx.Listen(network, addr, "echo")
		require.NoError(t, err)
		require.Equal(t, network == "unix", ln.Addr().Network() == "unix")
		h.start()
		c, err := net.Dial(network, ln.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, roundTrips(c, 81, 10))
		require.NoError(t, c.Close())
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, nil))
		require.Equal(t, "echo", e.proto)
		require.ErrorIs(t, e.err, io.EOF)
		var errs [2]error
		lfd := ln.FD()
		h.do(func() { errs[0], errs[1] = ln.Close(), ln.Close() })
		require.NoError(t, errs[0])
		require.ErrorIs(t, errs[1], core.ErrClosed, "second Listener.Close")
		require.True(t, h.fdClosed(lfd), "Listener.Close left the listening socket open")
		if network == "unix" {
			_, err := os.Stat(addr)
			require.True(t, errors.Is(err, os.ErrNotExist), "Listener.Close left the socket file %s", addr)
		}
		h.rec.verify(t)
	}
	t.Run("tcp4", func(t *testing.T) { serve(t, "tcp4", "127.0.0.1:0") })
	t.Run("tcp6", func(t *testing.T) {
		probe, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Skipf("conformance: no IPv6 loopback on this machine (listening on [::1]: %v)", err)
		}
		probe.Close()
		serve(t, "tcp6", "[::1]:0")
	})
	t.Run("unix", func(t *testing.T) {
		serve(t, "unix", filepath.Join(shortTempDir(t), "s"))
	})
	t.Run("UnixRemovedOnDestroy", func(t *testing.T) {
		h := s.newHarness(t, info)
		path := filepath.Join(shortTempDir(t), "d")
		_, err := h.ctx.Listen("unix", path, "")
		require.NoError(t, err)
		h.destroy()
		_, err = os.Stat(path)
		require.True(t, errors.Is(err, os.ErrNotExist), "Destroy left the socket file %s", path)
	})
	t.Run("Errors", func(t *testing.T) {
		h := s.newHarness(t, info)
		base := openFDs()
		_, err := h.ctx.Listen("udp", "127.0.0.1:0", "")
		require.ErrorIs(t, err, core.ErrInvalid)
		_, err = h.ctx.Listen("tcp4", "127.0.0.1:0", "nope")
		require.ErrorIs(t, err, core.ErrUnknownProtocol)
		_, err = h.ctx.Listen("tcp4", "256.0.0.1:0", "")
		require.Error(t, err)
		checkFDs(t, base)
	})
}

// Adoption: AdoptConn takes over a net.Conn; what cannot be adopted (a
// conn without a socket, a bad, closed or already adopted fd, the core's
// own wake fd, an unknown protocol) returns an error and loses nothing; a
// connection RAW_ADOPT refuses is closed by the core with RAW_CLOSE
// carrying the refusal.
func (s *suite) testAdopt(t *testing.T) {
	errRefused := errors.New("conformance: refused")
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{
		{Name: "echo", Callback: echoCallback},
		{Name: "refuse", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonRawAdopt {
				return errRefused
			}
			return nil
		}},
	}})
	h.start()
	srv, cli := tcpPair(t)
	var c *core.Conn
	var err error
	h.do(func() { c, err = h.ctx.AdoptConn(srv, "echo") })
	require.NoError(t, err)
	require.NoError(t, roundTrips(cli, 91, 10))
	_, err = srv.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed, "AdoptConn must close the net.Conn it adopted")
	require.Equal(t, cli.LocalAddr().String(), remoteAddr(h, c), "Conn.RemoteAddr")

	base := openFDs()
	adoptFD := func(fd int, proto string) error {
		var err error
		h.do(func() { _, err = h.ctx.AdoptFD(fd, proto) })
		return err
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	h.do(func() { _, err = h.ctx.AdoptConn(p1, "") })
	require.ErrorIs(t, err, core.ErrInvalid, "AdoptConn of a net.Conn without a socket")
	require.ErrorIs(t, adoptFD(-1, ""), core.ErrBadFD)
	require.ErrorIs(t, adoptFD(closedFD(t), ""), core.ErrBadFD)
	require.ErrorIs(t, adoptFD(math.MaxInt, ""), core.ErrBadFD, "AdoptFD of an fd beyond a C int")
	free, freePeer := unixPair(t)
	if alias, ok := aliasOf(free); ok {
		require.ErrorIs(t, adoptFD(alias, ""), core.ErrBadFD, "AdoptFD of %d, which a system call would truncate to the open fd %d", alias, free)
	}
	require.NoError(t, closeFD(free))
	require.NoError(t, freePeer.Close())
	require.ErrorIs(t, adoptFD(c.FD(), ""), core.ErrBadFD, "AdoptFD of an adopted fd")
	for _, e := range h.rec.snapshot() {
		if e.reason == core.ReasonAddPollFD && e.conn == nil {
			require.ErrorIs(t, adoptFD(e.fd, ""), core.ErrBadFD, "AdoptFD of the core's wake fd %d", e.fd)
		}
	}
	// Checklist 25: an fd number far above the others grows the core's
	// table and the backend's.
	lo, peerHi := unixPair(t)
	hi, err := unix.FcntlInt(uintptr(lo), unix.F_DUPFD_CLOEXEC, highFD())
	require.NoError(t, err)
	require.NoError(t, closeFD(lo))
	var chi *core.Conn
	h.do(func() { chi, err = h.ctx.AdoptFD(hi, "echo") })
	require.NoError(t, err, "AdoptFD of fd %d", hi)
	require.NoError(t, roundTrips(peerHi, 93, 5))
	require.NoError(t, peerHi.Close())
	e := h.rec.waitEvent(t, "RAW_CLOSE of the high fd", is(core.ReasonRawClose, chi))
	require.ErrorIs(t, e.err, io.EOF)
	require.True(t, h.fdClosed(hi), "fd %d left open", hi)

	fd, peer := unixPair(t)
	require.ErrorIs(t, adoptFD(fd, "nope"), core.ErrUnknownProtocol)
	require.True(t, fdOpen(fd), "a failed AdoptFD must leave the fd to the caller")
	require.NoError(t, closeFD(fd))
	peer.Close()
	checkFDs(t, base)

	fd, peer = unixPair(t)
	err = adoptFD(fd, "refuse")
	require.ErrorIs(t, err, errRefused, "AdoptFD refused by RAW_ADOPT")
	e = h.rec.waitEvent(t, "RAW_CLOSE of the refused connection", func(e event) bool {
		return e.reason == core.ReasonRawClose && e.proto == "refuse"
	})
	require.ErrorIs(t, e.err, errRefused)
	require.True(t, h.fdClosed(fd), "the core must close the fd of a connection RAW_ADOPT refused")
	expectEOF(t, peer)

	// Nothing was lost on the way: the first connection still echoes, and
	// only the two adoptions that succeeded (one then refused) were seen.
	require.NoError(t, roundTrips(cli, 92, 5))
	require.NoError(t, h.ctx.CancelService(), "the wake fd must still work")
	h.rec.waitEvent(t, "EVENT_WAIT_CANCELLED", is(core.ReasonEventWaitCancelled, nil))
	require.Equal(t, 3, h.rec.count(is(core.ReasonRawAdopt, nil)))
	require.Equal(t, 2, h.rec.count(is(core.ReasonRawClose, nil)))
	h.rec.verify(t)
}

func remoteAddr(h *harness, c *core.Conn) string {
	var s string
	h.do(func() {
		if a := c.RemoteAddr(); a != nil {
			s = a.String()
		}
	})
	return s
}

// Checklist 33: the poll-fd callbacks, in a scripted run: ADD for the wake
// fd (if the core uses one), the listener and an adopted connection before
// its RAW_ADOPT; CHANGE_MODE when rx flow control drops and restores read
// interest and when a partial write adds and removes write interest, each
// with the right PrevEvents; DEL before RAW_CLOSE; LOCK/UNLOCK around each
// with Len 1 for add and delete, 0 for a change. The recorder checks the
// same rules on every other test.
func (s *suite) testPollFD(t *testing.T) {
	big := pattern(101, 1<<20)
	// wantBig is touched only on the loop goroutine.
	wantBig := false
	cb := func(ev core.Event) error {
		if ev.Reason == core.ReasonRawWriteable && wantBig {
			wantBig = false
			_, err := ev.Conn.Write(big)
			return err
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "pfd", Callback: cb}}})
	evs := h.rec.snapshot()
	wakeAdded := false
	for _, e := range evs {
		if e.reason == core.ReasonAddPollFD && e.conn == nil {
			wakeAdded = true
		}
	}
	if s.desc.Caps&evlib.CapOwnWaker == 0 {
		require.True(t, wakeAdded, "the core's wake fd must be announced with ADD_POLL_FD")
	}

	// triple checks that the three events ending at index end of evs are
	// LOCK(len), op, UNLOCK(len) for fd.
	triple := func(evs []event, end int, op core.Reason, fd, n int) event {
		t.Helper()
		require.GreaterOrEqual(t, end, 2)
		l, o, u := evs[end-2], evs[end-1], evs[end]
		require.Equal(t, core.ReasonLockPoll, l.reason, "%v before %v", l, o)
		require.Equal(t, op, o.reason, "%v", o)
		require.Equal(t, core.ReasonUnlockPoll, u.reason, "%v after %v", u, o)
		for _, e := range []event{l, o, u} {
			require.Equal(t, fd, e.fd, "%v", e)
		}
		require.Equal(t, n, l.n, "%v", l)
		require.Equal(t, n, u.n, "%v", u)
		return o
	}
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	evs = h.rec.snapshot()
	add := triple(evs, len(evs)-1, core.ReasonAddPollFD, ln.FD(), 1)
	require.Equal(t, evlib.Readable, add.poll.Events)

	fd, peer := unixPair(t)
	c, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	evs = h.rec.snapshot()
	require.Equal(t, core.ReasonRawAdopt, evs[len(evs)-1].reason)
	add = triple(evs, len(evs)-2, core.ReasonAddPollFD, fd, 1)
	require.Equal(t, evlib.Readable, add.poll.Events)
	require.Equal(t, c, add.conn)
	h.start()

	change := func(from int, ev, prev evlib.Events) {
		t.Helper()
		e := h.rec.waitEventFrom(t, "CHANGE_MODE_POLL_FD "+prev.String()+"→"+ev.String(), from, func(e event) bool {
			return e.reason == core.ReasonChangeModePollFD && e.fd == fd
		})
		require.Equal(t, ev, e.poll.Events, "%v", e)
		require.Equal(t, prev, e.poll.PrevEvents, "%v", e)
		h.rec.waitEventFrom(t, "UNLOCK_POLL", e.seq, is(core.ReasonUnlockPoll, nil))
		triple(h.rec.snapshot(), e.seq+1, core.ReasonChangeModePollFD, fd, 0)
	}
	// Rx flow control: input while paused drops read interest, resume
	// restores it.
	m := h.rec.mark()
	h.do(func() { err = c.RxFlowControl(false) })
	require.NoError(t, err)
	write(t, peer, []byte("x"))
	change(m, 0, evlib.Readable)
	m = h.rec.mark()
	h.do(func() { err = c.RxFlowControl(true) })
	require.NoError(t, err)
	change(m, evlib.Readable, 0)
	h.rec.waitEventFrom(t, "RAW_RX", m, is(core.ReasonRawRX, c))

	// A partial write adds write interest until the core flushed.
	m = h.rec.mark()
	h.do(func() {
		wantBig = true
		err = c.CallbackOnWritable()
	})
	require.NoError(t, err)
	change(m, evlib.Readable|evlib.Writable, evlib.Readable)
	m = h.rec.mark()
	require.Equal(t, big, readFull(t, peer, len(big)))
	change(m, evlib.Readable, evlib.Readable|evlib.Writable)
	h.sync()
	require.Equal(t, 1, h.rec.count(is(core.ReasonRawWriteable, c)),
		"one request, one RAW_WRITEABLE, also when the kernel had to flush first (checklist 3)")

	// Close: DEL before RAW_CLOSE.
	h.do(func() { err = c.Close() })
	require.NoError(t, err)
	cl := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
	evs = h.rec.snapshot()
	del := triple(evs, cl.seq-1, core.ReasonDelPollFD, fd, 1)
	require.Equal(t, evlib.Readable, del.poll.PrevEvents)
	h.destroy()
	// The recorder's final check: every fd added was deleted.
}

// No leaks (checklist 31): after a workload touching every kind of
// descriptor the core handles, and after a context that never ran, the
// process holds the same descriptors and goroutines as before.
func (s *suite) testLeaks(t *testing.T) {
	baseFDs := openFDs()
	baseG := runtime.NumGoroutine()
	t.Run("Workload", func(t *testing.T) {
		errRefused := errors.New("refused")
		h := s.newHarness(t, core.Info{Protocols: []core.Protocol{
			{Name: "echo", Callback: echoCallback},
			{Name: "paused", Callback: func(ev core.Event) error {
				if ev.Reason == core.ReasonRawAdopt {
					return ev.Conn.RxFlowControl(false)
				}
				return nil
			}},
			{Name: "refuse", Callback: func(ev core.Event) error {
				if ev.Reason == core.ReasonRawAdopt {
					return errRefused
				}
				return nil
			}},
		}})
		tcp, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
		require.NoError(t, err)
		unixPath := filepath.Join(shortTempDir(t), "l")
		ul, err := h.ctx.Listen("unix", unixPath, "")
		require.NoError(t, err)
		_, err = h.ctx.Listen("tcp4", "256.0.0.1:0", "")
		require.Error(t, err)
		_, err = h.ctx.AdoptFD(-1, "")
		require.Error(t, err)
		_, err = h.th.AfterFunc(time.Hour, func() {})
		require.NoError(t, err)
		h.start()

		var peers []net.Conn
		for i := range 3 {
			c, err := net.Dial("tcp4", tcp.Addr().String())
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			require.NoError(t, roundTrips(c, uint64(200+i), 3))
			peers = append(peers, c)
		}
		peers[0].Close()
		uc, err := net.Dial("unix", ul.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { uc.Close() })
		require.NoError(t, roundTrips(uc, 210, 3))
		peers = append(peers, uc)

		srv, cli := tcpPair(t)
		h.do(func() { _, err = h.ctx.AdoptConn(srv, "echo") })
		require.NoError(t, err)
		peers = append(peers, cli)
		fd, peer := unixPair(t)
		h.do(func() { _, err = h.ctx.AdoptFD(fd, "paused") })
		require.NoError(t, err)
		write(t, peer, pattern(211, 100<<10))
		peers = append(peers, peer)
		fd, peer = unixPair(t)
		h.do(func() { _, err = h.ctx.AdoptFD(fd, "refuse") })
		require.ErrorIs(t, err, errRefused)
		peer.Close()
		require.NoError(t, h.ctx.CancelService())
		h.sync()

		h.destroy()
		_, err = os.Stat(unixPath)
		require.True(t, errors.Is(err, os.ErrNotExist), "the unix socket file %s outlived the context", unixPath)
		for _, p := range peers[1:] {
			require.NoError(t, p.SetReadDeadline(time.Now().Add(hang)))
			_, err := io.Copy(io.Discard, p)
			if !errors.Is(err, unix.ECONNRESET) { // closed with unread input
				require.NoError(t, err, "the peer must see the core close its end")
			}
		}
	})
	t.Run("NeverRun", func(t *testing.T) {
		h := s.newHarness(t, echoInfo())
		_, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
		require.NoError(t, err)
		fd, _ := unixPair(t)
		_, err = h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		h.destroy()
	})
	checkGoroutines(t, baseG)
	checkFDs(t, baseFDs)
}
