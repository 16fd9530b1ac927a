//go:build unix

package conformance

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func (s *suite) coreTests() []subtest {
	return []subtest{
		{"Echo", s.testEcho},
		{"Writeable", s.testWriteable},
		{"CloseInBatch", s.testCloseInBatch},
		{"FDReuse", s.testFDReuse},
		{"FDReuseInBatch", s.testFDReuseInBatch},
		{"FDOpenInRawClose", s.testFDOpenInClose},
		{"PeerClose", s.testPeerClose},
		{"HangupWhilePaused", s.testHangupWhilePaused},
		{"PeerEndAnswered", s.testPeerEndAnswered},
		{"HalfOpen", s.testHalfOpen},
		{"HalfOpenPeerReset", s.testHalfOpenPeerReset},
		{"CloseWrite", s.testCloseWrite},
		{"CloseWritePeerReset", s.testCloseWritePeerReset},
		{"CloseWriteBadInput", s.testCloseWriteBadInput},
		{"Abort", s.testAbort},
		{"PartialWrites", s.testPartialWrites},
		{"RxFlowControl", s.testRxFlowControl},
		{"RxShortPause", s.testRxShortPause},
		{"RxBackpressure", s.testRxBackpressure},
		{"ResumeDeliversAll", s.testResumeDeliversAll},
		{"ReadbufOrder", s.testReadbufOrder},
		{"Files", s.testCoreFiles},
		{"IdleSleeps", s.testIdleSleeps},
		{"WaitCountedAfterEvents", s.testWaitCountedAfterEvents},
		{"ServiceAdjustTimeout", s.testAdjustTimeout},
		{"Timers", s.testTimers},
		{"TimerScheduledEarlier", s.testTimerEarlier},
		{"TimersAfterIdleWait", s.testTimersAfterIdle},
		{"ConnTimers", s.testConnTimers},
		{"TimersNeverEarly", s.testTimersNeverEarly},
		{"TimerOrder", s.testTimerOrder},
		{"CancelService", s.testCancelService},
		{"Post", s.testPost},
		{"AllProtocol", s.testAllProtocol},
		{"CancelVersusDestroy", s.testCancelVersusDestroy},
		{"RunVersusDestroy", s.testRunVersusDestroy},
		{"WrongGoroutine", s.testWrongGoroutine},
		{"RunContextCancel", s.testRunContextCancel},
		{"DestroyInsideCallback", s.testDestroyInside},
		{"DestroyOutside", s.testDestroyOutside},
		{"DestroyIdle", s.testDestroyIdle},
		{"NewFailsMidway", s.testNewFailsMidway},
		{"Listen", s.testListen},
		{"Adopt", s.testAdopt},
		{"PollFDCallbacks", s.testPollFD},
		{"Model", s.testModel},
	}
}

// echoState is the per-connection state of the echo protocol.
type echoState struct{ q []byte }

// echoCallback echoes what it receives, one Write per WRITEABLE.
func echoCallback(ev core.Event) error {
	switch ev.Reason {
	case core.ReasonRawAdopt:
		ev.Conn.SetUser(&echoState{})
	case core.ReasonRawRX:
		s := ev.Conn.User().(*echoState)
		s.q = append(s.q, ev.Data...)
		return ev.Conn.CallbackOnWritable()
	case core.ReasonRawWriteable:
		s := ev.Conn.User().(*echoState)
		if len(s.q) > 0 {
			_, err := ev.Conn.Write(s.q)
			s.q = s.q[:0]
			return err
		}
	}
	return nil
}

func echoInfo() core.Info {
	return core.Info{Protocols: []core.Protocol{{Name: "echo", Callback: echoCallback}}}
}

// roundTrips sends n messages of varying sizes and checks each echo.
func roundTrips(c net.Conn, seed uint64, n int) error {
	if err := c.SetDeadline(time.Now().Add(hang)); err != nil {
		return err
	}
	for i := range n {
		msg := pattern(seed*1000+uint64(i), 1+(i*397)%3000)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("reading echo %d: %w", i, err)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo %d differs from what was sent", i)
		}
	}
	return nil
}

// Checklist 1 and 6: echo over loopback TCP, one connection after the
// other (so accepted fds get reused numbers) and several at once; each
// connection gets exactly one RAW_ADOPT and one RAW_CLOSE (io.EOF, as the
// peer closed), all on the loop goroutine.
func (s *suite) testEcho(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	h.start()
	const serial, parallel = 3, 4
	for i := range serial {
		c, err := net.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		require.NoError(t, roundTrips(c, uint64(i), 30))
		require.NoError(t, c.Close())
		waitUntil(t, "RAW_CLOSE", func() bool { return h.rec.count(is(core.ReasonRawClose, nil)) > i })
	}
	errs := make(chan error, parallel)
	for i := range parallel {
		go func() {
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err == nil {
				err = roundTrips(c, uint64(100+i), 30)
				c.Close()
			}
			errs <- err
		}()
	}
	for range parallel {
		require.NoError(t, waitCh(t, errs, "echo client"))
	}
	waitUntil(t, "every connection's RAW_CLOSE", func() bool {
		return h.rec.count(is(core.ReasonRawClose, nil)) == serial+parallel
	})
	h.sync()
	require.Equal(t, serial+parallel, h.rec.count(is(core.ReasonRawAdopt, nil)))
	require.Equal(t, serial+parallel, h.rec.count(is(core.ReasonRawClose, nil)))
	// Interest stays lazy: small echoes never meet a full socket, so they
	// must cost no interest change.
	require.Zero(t, h.rec.count(is(core.ReasonChangeModePollFD, nil)), "interest changes during a plain echo")
	for _, e := range h.rec.snapshot() {
		if e.reason == core.ReasonRawClose {
			require.ErrorIs(t, e.err, io.EOF, "the peer closed: %v", e)
		}
		if e.reason != core.ReasonProtocolInit && !isPollReason(e.reason) {
			s.onLoopGoroutine(t, h, e.g, "%v", e)
		}
	}
	h.rec.verify(t)
}

// Checklist 2 and 3: no RAW_WRITEABLE until asked; one per request, also
// when asked twice; asking inside RAW_WRITEABLE yields another; Write is
// allowed once per RAW_WRITEABLE of that connection and nowhere else.
func (s *suite) testWriteable(t *testing.T) {
	// st is touched only on the loop goroutine (callbacks and h.do).
	st := struct {
		a, b       *core.Conn
		writeables int
		chain      int
		payload    []byte
		errAdopt   error
		errRX      error
		errSecond  error
		errCross   error
		errs       []error
	}{}
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			_, st.errAdopt = ev.Conn.Write([]byte("no"))
		case core.ReasonRawRX:
			_, st.errRX = ev.Conn.Write([]byte("no"))
		case core.ReasonRawWriteable:
			if ev.Conn == st.b {
				_, st.errCross = st.a.Write([]byte("no"))
				return nil
			}
			st.writeables++
			switch {
			case st.chain > 0:
				st.chain--
				if st.chain > 0 {
					if err := ev.Conn.CallbackOnWritable(); err != nil {
						st.errs = append(st.errs, err)
					}
				}
				if _, err := ev.Conn.Write([]byte{byte('0' + st.chain)}); err != nil {
					st.errs = append(st.errs, err)
				}
			case st.payload != nil:
				if _, err := ev.Conn.Write(st.payload); err != nil {
					st.errs = append(st.errs, err)
				}
				_, st.errSecond = ev.Conn.Write(st.payload)
				st.payload = nil
			}
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "w", Callback: cb}}})
	fd, peer := unixPair(t)
	a, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	st.a = a
	require.ErrorIs(t, st.errAdopt, core.ErrNotWritable, "Write inside RAW_ADOPT")
	h.start()

	write(t, peer, []byte("x"))
	h.rec.waitEvent(t, "RAW_RX", is(core.ReasonRawRX, a))
	h.sync()
	var n int
	var errRX error
	h.do(func() { n, errRX = st.writeables, st.errRX })
	require.Zero(t, n, "RAW_WRITEABLE without CallbackOnWritable (checklist 2)")
	require.ErrorIs(t, errRX, core.ErrNotWritable, "Write inside RAW_RX")

	// One request, asked twice: one RAW_WRITEABLE.
	var e1, e2, e3 error
	h.do(func() {
		st.payload = []byte("A")
		e1 = a.CallbackOnWritable()
		e2 = a.CallbackOnWritable()
		_, e3 = a.Write([]byte("no"))
	})
	require.NoError(t, e1)
	require.NoError(t, e2)
	require.ErrorIs(t, e3, core.ErrNotWritable, "Write outside RAW_WRITEABLE")
	require.Equal(t, "A", string(readFull(t, peer, 1)))
	h.sync()
	var errSecond error
	h.do(func() { n, errSecond = st.writeables, st.errSecond })
	require.Equal(t, 1, n, "RAW_WRITEABLE count after one request made twice")
	require.ErrorIs(t, errSecond, core.ErrNotWritable, "second Write in one RAW_WRITEABLE")

	// Re-requested inside RAW_WRITEABLE: one more each time (checklist 3).
	h.do(func() {
		st.chain = 5
		e1 = a.CallbackOnWritable()
	})
	require.NoError(t, e1)
	require.Equal(t, "43210", string(readFull(t, peer, 5)))
	h.sync()
	var errs []error
	h.do(func() { n, errs = st.writeables, st.errs })
	require.Equal(t, 6, n, "RAW_WRITEABLE count after a chain of 5 re-requests")
	require.Empty(t, errs)

	// Writing to a inside b's RAW_WRITEABLE is not allowed either.
	fdB, _ := unixPair(t)
	h.do(func() {
		st.b, e1 = h.ctx.AdoptFD(fdB, "")
		if e1 == nil {
			e2 = st.b.CallbackOnWritable()
		}
	})
	require.NoError(t, e1)
	require.NoError(t, e2)
	h.rec.waitEvent(t, "RAW_WRITEABLE of b", is(core.ReasonRawWriteable, nil))
	h.sync()
	var errCross error
	h.do(func() { errCross = st.errCross })
	require.ErrorIs(t, errCross, core.ErrNotWritable, "Write to a inside b's RAW_WRITEABLE")
	require.Equal(t, 1, h.rec.count(is(core.ReasonRawWriteable, st.b)))
	h.rec.verify(t)
}

// Checklist 7: three connections ready in one batch; whichever of A and B
// is dispatched first closes the other. The closed one gets no RAW_RX
// after that, and C, ready in the same batch, is still served.
func (s *suite) testCloseInBatch(t *testing.T) {
	var conns [3]*core.Conn
	var rx [3]int
	var closeErr error
	index := func(c *core.Conn) int {
		for i, x := range conns {
			if x == c {
				return i
			}
		}
		return -1
	}
	cb := func(ev core.Event) error {
		if ev.Reason != core.ReasonRawRX {
			return nil
		}
		i := index(ev.Conn)
		rx[i]++
		if i < 2 {
			if other := conns[1-i]; !other.Closed() {
				closeErr = other.Close()
			}
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "batch", Callback: cb}}})
	var peers [3]net.Conn
	for i := range conns {
		fd, peer := unixPair(t)
		c, err := h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		conns[i], peers[i] = c, peer
	}
	h.start()
	// Written from the loop goroutine, so the next wait finds all three
	// ready at once (unix socket writes are synchronous).
	var werr error
	h.do(func() {
		for i, p := range peers {
			if _, err := p.Write([]byte{'a' + byte(i)}); err != nil {
				werr = err
			}
		}
	})
	require.NoError(t, werr)
	h.rec.waitEvent(t, "RAW_RX of C", is(core.ReasonRawRX, conns[2]))
	h.rec.waitEvent(t, "RAW_CLOSE of A or B", is(core.ReasonRawClose, nil))
	h.sync()
	var got [3]int
	var cerr error
	h.do(func() { got, cerr = rx, closeErr })
	require.NoError(t, cerr)
	require.Equal(t, 1, got[0]+got[1], "exactly one of A and B must have been served: %v", got)
	require.Equal(t, 1, got[2], "C, ready in the same batch, must be served")
	closed := conns[0]
	if got[0] == 1 {
		closed = conns[1]
	}
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, closed))
	require.NoError(t, e.err, "Conn.Close gives RAW_CLOSE a nil Err")
	require.Equal(t, 1, h.rec.count(is(core.ReasonRawClose, nil)))
	h.rec.verify(t)
}

// Checklist 8: an fd number closed by the core and reused at once by a new
// socket is watched afresh, and its events reach the new connection only.
func (s *suite) testFDReuse(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	fd1, peer1 := unixPair(t)
	x, err := h.ctx.AdoptFD(fd1, "")
	require.NoError(t, err)
	h.start()
	write(t, peer1, []byte("1"))
	require.Equal(t, "1", string(readFull(t, peer1, 1)))
	var cerr error
	h.do(func() { cerr = x.Close() })
	require.NoError(t, cerr)
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, x))
	require.NoError(t, e.err)
	require.True(t, h.fdClosed(fd1), "the core did not close fd %d after RAW_CLOSE", fd1)
	expectEOF(t, peer1)

	// A new socket with the very same number.
	a, b := nonblockPair(t)
	switch fd1 {
	case a:
	case b:
		a, b = b, a
	default:
		n, err := unix.FcntlInt(uintptr(a), unix.F_DUPFD_CLOEXEC, fd1)
		require.NoError(t, err)
		unix.Close(a)
		a = n
	}
	require.Equal(t, fd1, a, "could not get fd number %d again", fd1)
	peer2 := fileConn(t, b)
	var y *core.Conn
	h.do(func() { y, err = h.ctx.AdoptFD(a, "") })
	require.NoError(t, err, "adopting a reused fd number")
	require.Equal(t, fd1, y.FD())
	require.NoError(t, roundTrips(peer2, 8, 10))
	require.NoError(t, peer2.Close())
	e = h.rec.waitEvent(t, "RAW_CLOSE of the new connection", is(core.ReasonRawClose, y))
	require.ErrorIs(t, e.err, io.EOF)
	require.Equal(t, 1, h.rec.count(is(core.ReasonRawClose, x)))
	h.rec.verify(t)
}

// Checklist 8, within one batch: pipes whose writers closed (victims) and
// pipes with input (openers) are ready at once. The first victim's
// RAW_CLOSE closes the other victims; each opener's input makes its
// callback adopt a new pipe, its writer open and silent. A victim's fd
// stays open until the batch is over (for a backend that hands the core
// events one at a time, or an application's loop, until its wait's events
// are), so no new pipe can get its number and meet the victims' stale
// hang-ups, which would end it.
func (s *suite) testFDReuseInBatch(t *testing.T) {
	s.needFiles(t, "fd numbers reused inside a batch are not tested")
	const k = 4
	// Touched only on the loop goroutine.
	var victims, openers, fresh []*core.Conn
	var freshW []int
	var problems []string
	closedOthers, checking := false, true
	in := func(c *core.Conn, list []*core.Conn) bool {
		for _, x := range list {
			if x == c {
				return true
			}
		}
		return false
	}
	var h *harness
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawCloseFile:
			switch {
			case in(ev.Conn, fresh):
				if checking {
					problems = append(problems, fmt.Sprintf("a new pipe, its writer open, was closed: %v", ev.Err))
				}
			case in(ev.Conn, victims) && !closedOthers:
				closedOthers = true
				for _, v := range victims {
					if v != ev.Conn && !v.Closed() {
						v.Close()
					}
				}
			}
		case core.ReasonRawRXFile:
			if in(ev.Conn, fresh) {
				problems = append(problems, "a new pipe, written nothing, had input")
				return nil
			}
			var buf [8]byte
			unix.Read(ev.Conn.FD(), buf[:])
			if in(ev.Conn, openers) {
				var p [2]int
				if err := nonblockPipe(&p); err != nil {
					problems = append(problems, err.Error())
					return nil
				}
				c, err := h.ctx.AdoptFile(p[0], "")
				if err != nil {
					unix.Close(p[0])
					unix.Close(p[1])
					problems = append(problems, err.Error())
					return nil
				}
				fresh, freshW = append(fresh, c), append(freshW, p[1])
			}
		}
		return nil
	}
	h = s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "reuse", Callback: cb}}})
	var writers []int
	t.Cleanup(func() {
		for _, w := range writers {
			unix.Close(w)
		}
	})
	for range k {
		for _, list := range []*[]*core.Conn{&victims, &openers} {
			var p [2]int
			require.NoError(t, nonblockPipe(&p))
			c, err := h.ctx.AdoptFile(p[0], "")
			if err != nil {
				unix.Close(p[0])
				unix.Close(p[1])
			}
			require.NoError(t, err)
			*list = append(*list, c)
			writers = append(writers, p[1])
		}
	}
	h.start()
	// From the loop goroutine, so that the next wait finds them all ready,
	// a victim, an opener, and so on. A victim's writer is replaced, not
	// closed, so that its number stays taken: the new pipes are to get
	// numbers freed inside the batch, or none.
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(null)
	var werr error
	h.do(func() {
		for i, w := range writers {
			if i%2 == 0 {
				werr = errors.Join(werr, unix.Dup2(null, w))
			} else if _, err := unix.Write(w, []byte("x")); err != nil {
				werr = errors.Join(werr, err)
			}
		}
	})
	require.NoError(t, werr)
	for _, v := range victims {
		h.rec.waitEvent(t, "RAW_CLOSE_FILE of a victim", is(core.ReasonRawClose, v)) // file reasons are recorded as such
	}
	var opened int
	for opened < k {
		h.sync()
		h.do(func() { opened = len(fresh) })
	}
	h.sync()
	var got []string
	h.do(func() {
		got = problems
		checking = false
		writers = append(writers, freshW...)
	})
	require.Empty(t, got)
}

// Checklist 6 and 8: the core closes a connection's fd after RAW_CLOSE
// returns (at the end of the batch), never before: inside RAW_CLOSE the fd
// is still the connection's socket, whatever closed it — the peer, Conn.Close,
// an error returned from a callback, a timeout — so the callback may still
// ask it (RemoteAddr, getsockopt) and a number reused meanwhile cannot be
// taken for it.
func (s *suite) testFDOpenInClose(t *testing.T) {
	type file struct{ dev, ino uint64 }
	stat := func(fd int) (file, error) {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return file{}, err
		}
		return file{uint64(st.Dev), uint64(st.Ino)}, nil
	}
	// Touched only on the loop goroutine.
	adopted := map[*core.Conn]file{}
	var errs []error
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			f, err := stat(ev.Conn.FD())
			if err != nil {
				errs = append(errs, err)
			}
			adopted[ev.Conn] = f
		case core.ReasonRawRX:
			switch string(ev.Data) {
			case "close":
				return ev.Conn.Close()
			case "error":
				return errors.New("refused by the callback")
			case "timeout":
				return ev.Conn.SetTimeout(time.Millisecond)
			}
		case core.ReasonRawClose:
			f, err := stat(ev.Conn.FD())
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("fd %d in RAW_CLOSE (%v): %w", ev.Conn.FD(), ev.Err, err))
			case f != adopted[ev.Conn]:
				errs = append(errs, fmt.Errorf("fd %d in RAW_CLOSE (%v) is another file", ev.Conn.FD(), ev.Err))
			}
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "fd", Callback: cb}}})
	h.start()
	for _, how := range []string{"peer", "close", "error", "timeout"} {
		fd, peer := unixPair(t)
		var c *core.Conn
		var err error
		h.do(func() { c, err = h.ctx.AdoptFD(fd, "") })
		require.NoError(t, err)
		if how == "peer" {
			require.NoError(t, peer.Close())
		} else {
			write(t, peer, []byte(how))
		}
		h.rec.waitEvent(t, "RAW_CLOSE after "+how, is(core.ReasonRawClose, c))
	}
	var e []error
	h.do(func() { e = errs })
	require.Empty(t, e)
	h.rec.verify(t)
}

// Checklist 9: the peer's FIN (or half-close) closes with io.EOF, its
// reset closes with the reset error.
func (s *suite) testPeerClose(t *testing.T) {
	h := s.newHarness(t, echoInfo())
	h.start()
	adopt := func(t *testing.T, c net.Conn) *core.Conn {
		h := h.with(t)
		var conn *core.Conn
		var err error
		h.do(func() { conn, err = h.ctx.AdoptConn(c, "") })
		require.NoError(t, err)
		return conn
	}
	t.Run("FIN", func(t *testing.T) {
		h := h.with(t)
		srv, cli := tcpPair(t)
		c := adopt(t, srv)
		require.NoError(t, roundTrips(cli, 1, 3))
		require.NoError(t, cli.Close())
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
		require.ErrorIs(t, e.err, io.EOF)
	})
	t.Run("HalfClose", func(t *testing.T) {
		h := h.with(t)
		srv, cli := tcpPair(t)
		c := adopt(t, srv)
		require.NoError(t, roundTrips(cli, 2, 3))
		require.NoError(t, cli.CloseWrite())
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
		require.ErrorIs(t, e.err, io.EOF)
		expectEOF(t, cli)
	})
	t.Run("Reset", func(t *testing.T) {
		h := h.with(t)
		srv, cli := tcpPair(t)
		c := adopt(t, srv)
		require.NoError(t, roundTrips(cli, 3, 3))
		require.NoError(t, cli.SetLinger(0))
		require.NoError(t, cli.Close())
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
		require.Error(t, e.err, "a reset connection closes with an error")
		require.NotErrorIs(t, e.err, io.EOF, "a reset is not an orderly end of stream")
		require.ErrorIs(t, e.err, unix.ECONNRESET)
	})
	t.Run("UnixReset", func(t *testing.T) {
		if runtime.GOOS != "linux" {
			t.Skip("only Linux resets a unix stream whose peer closed with input unread; the others end it in order")
		}
		h := h.with(t)
		fd, peer := nonblockPair(t)
		c := adopt(t, fileConn(t, fd))
		_, err := unix.Write(peer, []byte("ping"))
		require.NoError(t, err)
		// The echo lands in the peer's queue, then the peer closes
		// without reading it: a reset.
		p := []unix.PollFd{{Fd: int32(peer), Events: unix.POLLIN}}
		n, err := unix.Poll(p, int(hang/time.Millisecond))
		require.NoError(t, err)
		require.Equal(t, 1, n, "no echo")
		require.NoError(t, unix.Close(peer))
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
		if s.desc.Caps&evlib.CapUnixReset != 0 {
			require.ErrorIs(t, e.err, unix.ECONNRESET, "evlib.CapUnixReset declared")
		} else {
			require.ErrorIs(t, e.err, io.EOF, "evlib.CapUnixReset not declared: the reset ends the stream in order; if the backend passes it on, declare it")
		}
	})
	h.rec.verify(t)
}

// Checklist 9: a paused connection whose peer sent data and hung up gets
// that data, in order, after it resumes, and only then RAW_CLOSE; if it
// never resumes, it closes after Info.CloseTimeout.
func (s *suite) testHangupWhilePaused(t *testing.T) {
	data := pattern(7, 300)
	type rig struct {
		h    *harness
		got  []byte // loop goroutine only
		conn *core.Conn
	}
	newRig := func(t *testing.T, closeTimeout time.Duration) *rig {
		r := &rig{}
		cb := func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				return ev.Conn.RxFlowControl(false)
			case core.ReasonRawRX:
				r.got = append(r.got, ev.Data...)
			}
			return nil
		}
		r.h = s.newHarness(t, core.Info{CloseTimeout: closeTimeout,
			Protocols: []core.Protocol{{Name: "paused", Callback: cb, RxChunk: 64}}})
		return r
	}
	// resume waits until the core has read the input after the hangup
	// (it reads a paused connection only then), resumes it and checks
	// what it delivers.
	resume := func(t *testing.T, r *rig, base uint64, wantErr error) {
		h := r.h
		waitUntil(t, "the core to read the paused connection's input after the hangup (it does once the backend reports Hangup or Error: see evlib.Hangup)", func() bool {
			return h.th.Stats().Reads >= base+2
		})
		h.sync()
		var n int
		var closed bool
		h.do(func() { n, closed = len(r.got), r.conn.Closed() })
		require.Zero(t, n, "RAW_RX while paused")
		require.False(t, closed, "closed while paused input was still buffered")
		// Nothing can come for it any more, and a hang-up is reported
		// whatever the interest: it must be out of the poll set, or every
		// wait would end at once until the input is consumed.
		require.Equal(t, 1, h.rec.count(is(core.ReasonDelPollFD, r.conn)), "DEL_POLL_FD of the hung-up paused connection")
		var err error
		h.do(func() { err = r.conn.RxFlowControl(true) })
		require.NoError(t, err)
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, r.conn))
		require.ErrorIs(t, e.err, wantErr)
		var got []byte
		h.do(func() { got = r.got })
		require.Equal(t, data, got, "input buffered before the hangup must be delivered in full and in order before RAW_CLOSE")
		require.Equal(t, (len(data)+63)/64, h.rec.count(is(core.ReasonRawRX, r.conn)))
		h.rec.verify(t)
	}
	t.Run("FIN", func(t *testing.T) {
		r := newRig(t, time.Minute)
		fd, peer := nonblockPair(t)
		_, err := unix.Write(peer, data)
		require.NoError(t, err)
		require.NoError(t, unix.Close(peer))
		base := r.h.th.Stats().Reads
		r.conn, err = r.h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		r.h.start()
		resume(t, r, base, io.EOF)
	})
	t.Run("Reset", func(t *testing.T) {
		r := newRig(t, time.Minute)
		srv, cli := tcpPair(t)
		base := r.h.th.Stats().Reads
		var err error
		r.conn, err = r.h.ctx.AdoptConn(srv, "")
		require.NoError(t, err)
		write(t, cli, data)
		require.NoError(t, cli.SetLinger(0))
		require.NoError(t, cli.Close())
		r.h.start()
		resume(t, r, base, unix.ECONNRESET)
	})
	t.Run("CloseTimeout", func(t *testing.T) {
		r := newRig(t, 20*time.Millisecond)
		fd, peer := nonblockPair(t)
		_, err := unix.Write(peer, data)
		require.NoError(t, err)
		require.NoError(t, unix.Close(peer))
		r.conn, err = r.h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		r.h.start()
		e := r.h.rec.waitEvent(t, "RAW_CLOSE after CloseTimeout", is(core.ReasonRawClose, r.conn))
		require.ErrorIs(t, e.err, io.EOF, "closed after CloseTimeout with the hangup's reason")
		require.Zero(t, r.h.rec.count(is(core.ReasonRawRX, nil)), "RAW_RX although never resumed")
		r.h.rec.verify(t)
	})
}

// The peer's end of stream ends its input, not what the connection owes
// it: a peer that sends everything, shuts its write side down and only then
// reads (as "nc -N", or an HTTP client pipelining its requests, does) gets
// every byte the application answers, also what the kernel had not taken
// and what the application answers after the end was read, and then end of
// stream; RAW_CLOSE says io.EOF. "Unpaused" echoes without flow control, so
// the core reads the end while it holds most of the echo; "Paused" answers
// chunk by chunk, pausing rx until each answer has left, so the end may come
// while rx is paused and output is waiting.
//
// "Unpaused" runs on a unix stream pair, not on TCP: its peer goes on
// writing long after its own receive buffer filled, and Linux 6.17 and
// later (from "tcp: stronger sk_rcvbuf checks") may then retract that
// receiver's window to zero and reject every segment of the server's,
// pure ACKs included, until the peer reads; the peer's writes wait for
// those ACKs, so the connection stalls in the kernel whatever the server
// does. (Seen on 6.18: the server had read every byte, the peer's data
// stood unacknowledged in its send queue, and TcpExtBeyondWindow counted
// the server's segments the peer dropped.) "Paused" keeps TCP: its peer
// reads while it writes.
func (s *suite) testPeerEndAnswered(t *testing.T) {
	t.Run("Unpaused", func(t *testing.T) {
		const total = 16 << 20
		h := s.newHarness(t, core.Info{CloseTimeout: time.Minute, Protocols: []core.Protocol{{Name: "echo", Callback: echoCallback}}})
		fd, peer := unixPair(t)
		// A narrow send buffer: the echo backs up soon.
		require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 32<<10))
		conn, err := h.ctx.AdoptFD(fd, "")
		if err != nil {
			unix.Close(fd)
		}
		require.NoError(t, err)
		h.start()
		data := pattern(21, total)
		// All of it, then the end, before reading a byte: the server holds
		// most of the echo when it reads the end.
		write(t, peer, data)
		require.NoError(t, peer.(*net.UnixConn).CloseWrite())
		h.answeredThenEOF(t, conn, peer, data, nil, io.EOF)
	})
	t.Run("Paused", func(t *testing.T) {
		const total, chunk = 1 << 20, 4 << 10
		type state struct {
			q      []byte
			paused bool
		}
		cb := func(ev core.Event) error {
			c := ev.Conn
			switch ev.Reason {
			case core.ReasonRawAdopt:
				c.SetUser(&state{})
			case core.ReasonRawRX:
				st := c.User().(*state)
				st.q = append(st.q, ev.Data...)
				st.paused = true
				if err := c.RxFlowControl(false); err != nil {
					return err
				}
				return c.CallbackOnWritable()
			case core.ReasonRawWriteable:
				st := c.User().(*state)
				if len(st.q) > 0 {
					if _, err := c.Write(st.q); err != nil {
						return err
					}
					st.q = st.q[:0]
				}
				if c.Buffered() > 0 {
					return c.CallbackOnWritable() // resume once it has left
				}
				if st.paused {
					st.paused = false
					return c.RxFlowControl(true)
				}
			}
			return nil
		}
		h := s.newHarness(t, core.Info{CloseTimeout: time.Minute,
			Protocols: []core.Protocol{{Name: "answer", Callback: cb, RxChunk: chunk}}})
		conn, cli := h.adoptNarrowPair(t)
		h.start()
		data := pattern(22, total)
		werr := make(chan error, 1)
		go func() {
			_, err := cli.Write(data)
			if err == nil {
				err = cli.CloseWrite()
			}
			werr <- err
		}()
		h.answeredThenEOF(t, conn, cli, data, werr, io.EOF)
	})
}

// adoptNarrowPair makes a loopback TCP pair with 32 KiB buffers where the
// data flows back to the client, so that output backs up soon, and adopts
// its server end.
func (h *harness) adoptNarrowPair(t *testing.T) (*core.Conn, *net.TCPConn) {
	t.Helper()
	srv, cli := tcpPair(t)
	require.NoError(t, srv.SetWriteBuffer(32<<10))
	require.NoError(t, cli.SetReadBuffer(32<<10))
	conn, err := h.ctx.AdoptConn(srv, "")
	require.NoError(t, err)
	return conn, cli
}

// answeredThenEOF checks that cli receives the answer, data, whole, then
// end of stream, and that conn closed with want (io.EOF, or nil for a
// close of the application's). werr, if not nil, carries the result of the
// client's own writes.
func (h *harness) answeredThenEOF(t *testing.T, conn *core.Conn, cli net.Conn, data []byte, werr chan error, want error) {
	t.Helper()
	got := readFull(t, cli, len(data))
	if werr != nil {
		require.NoError(t, waitCh(t, werr, "the peer's writes"))
	}
	if !bytes.Equal(data, got) {
		t.Fatalf("conformance: answer corrupted: sha256 sent %x, received %x", sha256.Sum256(data), sha256.Sum256(got))
	}
	expectEOF(t, cli)
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
	if want == nil {
		require.NoError(t, e.err)
	} else {
		require.ErrorIs(t, e.err, want)
	}
	h.rec.verify(t)
}

// A Write the kernel takes only in part loses no byte: several MB pushed
// through one WRITEABLE-driven stream to a reader that starts only after
// the first partial write arrive whole and in order.
func (s *suite) testPartialWrites(t *testing.T) {
	const total, chunk = 4 << 20, 256 << 10
	data := pattern(11, total)
	partial := make(chan struct{})
	// st is touched only on the loop goroutine.
	st := struct {
		off        int
		sawPartial bool
		leftover   int
		errs       []error
	}{}
	cb := func(ev core.Event) error {
		if ev.Reason != core.ReasonRawWriteable {
			return nil
		}
		c := ev.Conn
		if st.off < total {
			end := min(st.off+chunk, total)
			n, err := c.Write(data[st.off:end])
			if err != nil || n != end-st.off {
				st.errs = append(st.errs, fmt.Errorf("write returned %d, %v for %d bytes", n, err, end-st.off))
				return err
			}
			st.off = end
			if c.Buffered() > 0 && !st.sawPartial {
				st.sawPartial = true
				close(partial)
			}
			return c.CallbackOnWritable()
		}
		// RAW_WRITEABLE comes only once the core flushed what it kept.
		st.leftover = c.Buffered()
		return c.Close()
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "stream", Callback: cb}}})
	conn, cli := h.adoptNarrowPair(t)
	require.NoError(t, conn.CallbackOnWritable())
	h.start()
	waitCh(t, partial, "a Write that the kernel took only in part")

	require.NoError(t, cli.SetReadDeadline(time.Now().Add(hang)))
	got := make([]byte, 0, total)
	buf := make([]byte, 4<<10)
	for {
		n, err := cli.Read(buf)
		got = append(got, buf[:n]...)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "reading the stream after %d bytes", len(got))
	}
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
	require.NoError(t, e.err)
	var leftover int
	var errs []error
	h.do(func() { leftover, errs = st.leftover, st.errs })
	require.Empty(t, errs)
	require.Zero(t, leftover, "RAW_WRITEABLE came while the core still held unsent bytes")
	require.Equal(t, total, len(got), "bytes received")
	if !bytes.Equal(data, got) {
		t.Fatalf("conformance: stream corrupted: sha256 sent %x, received %x", sha256.Sum256(data), sha256.Sum256(got))
	}
	h.rec.verify(t)
}

// Checklist 12: rx flow control. With RxChunk 16, pausing inside RAW_RX
// stops RAW_RX at once; resuming delivers the kept bytes first, in order,
// with no new network input; input that arrives while paused stays in the
// kernel (read interest dropped) and follows on resume. Every byte arrives
// exactly once.
func (s *suite) testRxFlowControl(t *testing.T) {
	const chunk = 16
	// st is touched only on the loop goroutine.
	st := struct {
		got      []byte
		calls    int
		pauseAt  int
		paused   chan struct{}
		want     int
		reached  chan struct{}
		errs     []error
		oversize int
	}{}
	cb := func(ev core.Event) error {
		if ev.Reason != core.ReasonRawRX {
			return nil
		}
		st.got = append(st.got, ev.Data...)
		st.calls++
		if len(ev.Data) > chunk {
			st.oversize++
		}
		if st.pauseAt > 0 && st.calls == st.pauseAt {
			st.pauseAt = 0
			if err := ev.Conn.RxFlowControl(false); err != nil {
				st.errs = append(st.errs, err)
			}
			if !ev.Conn.RxPaused() {
				st.errs = append(st.errs, errors.New("RxPaused false after RxFlowControl(false)"))
			}
			close(st.paused)
		}
		if st.want > 0 && len(st.got) >= st.want {
			st.want = 0
			close(st.reached)
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "flow", Callback: cb, RxChunk: chunk}}})
	fd, peer := unixPair(t)
	p1, p2, p3, p4 := pattern(21, 4096), pattern(22, 2000), pattern(23, 3000), pattern(24, 1000)
	write(t, peer, p1) // one write, read by the core in one go
	st.pauseAt, st.paused = 3, make(chan struct{})
	conn, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	h.start()

	received := func() int {
		var n int
		h.do(func() { n = len(st.got) })
		return n
	}
	resumeUntil := func(total int) {
		t.Helper()
		ch := make(chan struct{})
		var err error
		h.do(func() {
			st.want, st.reached = total, ch
			err = conn.RxFlowControl(true)
		})
		require.NoError(t, err)
		waitCh(t, ch, fmt.Sprintf("%d bytes after resume", total))
	}
	dropped := func(from int) {
		t.Helper()
		h.rec.waitEventFrom(t, "read interest dropped while paused", from, func(e event) bool {
			return e.reason == core.ReasonChangeModePollFD && e.fd == conn.FD() && e.poll.Events&evlib.Readable == 0
		})
	}

	// Pause inside the third RAW_RX: nothing more until resumed.
	waitCh(t, st.paused, "the third RAW_RX")
	h.sync()
	require.Equal(t, 3*chunk, received(), "RAW_RX after RxFlowControl(false) inside RAW_RX")
	resumeUntil(len(p1)) // no network input meanwhile

	// Pause from outside; new input stays in the kernel.
	mark := h.rec.mark()
	h.do(func() { err = conn.RxFlowControl(false) })
	require.NoError(t, err)
	write(t, peer, p2)
	dropped(mark)
	h.sync()
	require.Equal(t, len(p1), received(), "RAW_RX while paused")
	resumeUntil(len(p1) + len(p2))

	// Pause inside RAW_RX with input kept by the core and more arriving.
	// The mark comes before p3: a backend may take p3 in two reads, and the
	// second, arriving while paused, may drop the interest before p4.
	ch := make(chan struct{})
	h.do(func() { st.pauseAt, st.paused = st.calls+2, ch })
	mark = h.rec.mark()
	write(t, peer, p3)
	waitCh(t, ch, "RAW_RX to pause in")
	write(t, peer, p4)
	dropped(mark)
	h.sync()
	require.Equal(t, len(p1)+len(p2)+2*chunk, received(), "RAW_RX while paused")
	resumeUntil(len(p1) + len(p2) + len(p3) + len(p4))

	h.sync()
	var got []byte
	var errs []error
	var oversize int
	h.do(func() { got, errs, oversize = st.got, st.errs, st.oversize })
	require.Empty(t, errs)
	require.Zero(t, oversize, "RAW_RX carried more than Protocol.RxChunk bytes")
	want := bytes.Join([][]byte{p1, p2, p3, p4}, nil)
	require.Equal(t, len(want), len(got), "bytes delivered")
	require.True(t, bytes.Equal(want, got), "bytes delivered out of order or altered")
	h.rec.verify(t)
}

// A short pause costs no interest change: an echo that stops rx in every
// RAW_RX and resumes it in the RAW_WRITEABLE that sends the echo, before
// the peer (which waits for the echo) can send again, never has input
// arrive while stopped, so the core never changes the connection's
// interest (RxFlowControl's promise).
func (s *suite) testRxShortPause(t *testing.T) {
	var errs []error // loop goroutine
	cb := func(ev core.Event) error {
		var err error
		switch ev.Reason {
		case core.ReasonRawRX:
			if err = ev.Conn.RxFlowControl(false); err == nil {
				err = echoCallback(ev)
			}
		case core.ReasonRawWriteable:
			if err = echoCallback(ev); err == nil {
				err = ev.Conn.RxFlowControl(true)
			}
		default:
			return echoCallback(ev)
		}
		if err != nil {
			errs = append(errs, err)
		}
		return err
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "pausing-echo", Callback: cb}}})
	fd, peer := unixPair(t)
	conn, err := h.ctx.AdoptFD(fd, "")
	require.NoError(t, err)
	h.start()
	require.NoError(t, peer.SetDeadline(time.Now().Add(hang)))
	for i := range 50 {
		msg := pattern(uint64(500+i), 1+(i*97)%1000) // one write, taken by one read
		write(t, peer, msg)
		require.True(t, bytes.Equal(msg, readFull(t, peer, len(msg))), "echo %d", i)
	}
	h.sync()
	var e []error
	var paused bool
	h.do(func() { e, paused = errs, conn.RxPaused() })
	require.Empty(t, e)
	require.False(t, paused)
	require.Zero(t, h.rec.count(func(e event) bool {
		return e.reason == core.ReasonChangeModePollFD && e.fd == conn.FD()
	}), "interest changes for pauses that no input met")
	h.rec.verify(t)
}

// Where the backend declares CapRxBackpressure, a paused connection leaves
// input in the kernel, so a peer writing without pause ends up blocked;
// after resume every byte it wrote arrives.
func (s *suite) testRxBackpressure(t *testing.T) {
	if s.desc.Caps&evlib.CapRxBackpressure == 0 {
		t.Skipf("conformance: backend %q declares it lacks evlib.CapRxBackpressure: a paused connection does not push back on its peer", s.name)
	}
	const limit = 256 << 20
	p := s.newPausedPeer(t)
	written := p.fill(t, limit)
	require.Less(t, written, limit, "the peer wrote %d bytes to a paused connection without ever blocking", written)
	t.Logf("peer blocked after %d bytes", written)
	p.resume(t)
}

// A paused connection that holds many reads' worth of input delivers all
// of it, in order, after resume, on every backend, whether the input waits
// in the kernel or in the backend's buffer.
func (s *suite) testResumeDeliversAll(t *testing.T) {
	p := s.newPausedPeer(t)
	written := p.fill(t, 1<<20)
	t.Logf("peer wrote %d bytes while paused", written)
	p.resume(t)
}

// pausedPeer is a connection paused from its adoption and the peer that
// writes to it.
type pausedPeer struct {
	h       *harness
	conn    *core.Conn
	cli     *net.TCPConn
	table   *crc64.Table
	written int
	sum     uint64 // of the bytes written
	// st is touched only on the loop goroutine.
	st struct {
		n       int
		sum     uint64
		want    int
		reached chan struct{}
	}
}

func (s *suite) newPausedPeer(t *testing.T) *pausedPeer {
	p := &pausedPeer{table: crc64.MakeTable(crc64.ECMA)}
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			return ev.Conn.RxFlowControl(false)
		case core.ReasonRawRX:
			st := &p.st
			st.n += len(ev.Data)
			st.sum = crc64.Update(st.sum, p.table, ev.Data)
			if st.want > 0 && st.n >= st.want {
				st.want = 0
				close(st.reached)
			}
		}
		return nil
	}
	p.h = s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "paused", Callback: cb}}})
	srv, cli := tcpPair(t)
	require.NoError(t, cli.SetWriteBuffer(16<<10))
	conn, err := p.h.ctx.AdoptConn(srv, "")
	require.NoError(t, err)
	p.conn, p.cli = conn, cli
	p.h.start()
	return p
}

// fill writes the test stream to the paused connection until the peer
// stays blocked or limit bytes are written, and returns how many it wrote.
// No RAW_RX may come meanwhile: blocked for good means the socket stays
// full while the loop runs, the core not reading a paused connection.
func (p *pausedPeer) fill(t *testing.T, limit int) int {
	n := fillBlocked(t, p.h, p.cli, p.written, limit-p.written)
	p.sum = crc64.Update(p.sum, p.table, streamAt(p.written, n))
	p.written += n
	var rx int
	p.h.do(func() { rx = p.st.n })
	require.Zero(t, rx, "RAW_RX while paused")
	return p.written
}

// resume turns rx back on and checks that every byte written arrives, in
// order.
func (p *pausedPeer) resume(t *testing.T) {
	h := p.h
	ch := make(chan struct{})
	var err error
	h.do(func() {
		p.st.want, p.st.reached = p.written, ch
		err = p.conn.RxFlowControl(true)
	})
	require.NoError(t, err)
	waitCh(t, ch, fmt.Sprintf("%d bytes after resume", p.written))
	h.sync()
	var got, gotSum = 0, uint64(0)
	h.do(func() { got, gotSum = p.st.n, p.st.sum })
	require.Equal(t, p.written, got, "bytes delivered after resume")
	require.Equal(t, p.sum, gotSum, "checksum of the bytes delivered after resume")
	h.rec.verify(t)
}

// Checklist 36: an adopted pipe gets RAW_ADOPT, RAW_RX and, when its
// writer closes, RAW_CLOSE with io.EOF, where the backend declares
// CapFiles.
func (s *suite) testCoreFiles(t *testing.T) {
	s.needFiles(t, "adopted pipes are not tested")
	var got []byte
	cb := func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRX {
			got = append(got, ev.Data...)
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "pipe", Callback: cb}}})
	var p [2]int
	require.NoError(t, unix.Pipe(p[:]))
	unix.CloseOnExec(p[0])
	unix.CloseOnExec(p[1])
	conn, err := h.ctx.AdoptFD(p[0], "")
	if err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
	}
	require.NoError(t, err)
	h.start()
	_, err = unix.Write(p[1], []byte("through a pipe"))
	if err != nil {
		unix.Close(p[1])
	}
	require.NoError(t, err)
	h.rec.waitEvent(t, "RAW_RX", is(core.ReasonRawRX, conn))
	require.NoError(t, unix.Close(p[1]))
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
	require.ErrorIs(t, e.err, io.EOF)
	var s2 string
	h.do(func() { s2 = string(got) })
	require.Equal(t, "through a pipe", s2)
	h.rec.verify(t)
}
