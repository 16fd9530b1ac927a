//go:build unix

package conformance

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// halfOpenCloseTimeout is the CloseTimeout of the half-open tests: short,
// so that a connection the core still closed after the peer's end (the rule
// without AllowHalfOpen) is closed long before the application answers, five
// of them later.
const halfOpenCloseTimeout = 10 * time.Millisecond

// With Protocol.AllowHalfOpen the peer's orderly end (shutdown(SHUT_WR))
// leaves the connection open: every byte the peer sent comes in RAW_RX, then
// RAW_RX_END once, and the application answers when it likes, here from a
// timer five CloseTimeouts later, with MiBs through narrow socket buffers
// (several WRITEABLEs), and ends with CloseWrite while output is held; the
// peer reads every byte, then end of stream; RAW_CLOSE says nil, the close
// being the application's. "Paused" has rx paused (in its first RAW_RX,
// with the rest of the input kept) when the end arrives: RAW_RX_END waits
// for the resume, which comes after a thread timer five CloseTimeouts
// later, and follows the kept input.
func (s *suite) testHalfOpen(t *testing.T) {
	const chunk = 256 << 10
	input := pattern(31, 100<<10)
	answer := pattern(32, 4<<20)
	later := 5 * halfOpenCloseTimeout
	type state struct {
		got    []byte
		paused bool // paused in the first RAW_RX
		atEnd  int  // len(got) at RAW_RX_END
		off    int  // of answer, written
		held   int  // Buffered at CloseWrite
	}
	rig := func(t *testing.T, pause bool) (*harness, *state) {
		st := &state{atEnd: -1}
		cb := func(ev core.Event) error {
			c := ev.Conn
			switch ev.Reason {
			case core.ReasonRawRX:
				st.got = append(st.got, ev.Data...)
				if pause && !st.paused {
					st.paused = true
					return c.RxFlowControl(false)
				}
			case core.ReasonRawRxEnd:
				st.atEnd = len(st.got)
				return c.SetTimer(later)
			case core.ReasonTimer:
				return c.CallbackOnWritable()
			case core.ReasonRawWriteable:
				end := min(st.off+chunk, len(answer))
				if _, err := c.Write(answer[st.off:end]); err != nil {
					return err
				}
				st.off = end
				if end < len(answer) {
					return c.CallbackOnWritable()
				}
				st.held = c.Buffered()
				return c.CloseWrite()
			}
			return nil
		}
		rxChunk := 0
		if pause {
			rxChunk = 1 << 10
		}
		h := s.newHarness(t, core.Info{CloseTimeout: halfOpenCloseTimeout, Protocols: []core.Protocol{
			{Name: "halfopen", Callback: cb, RxChunk: rxChunk, AllowHalfOpen: true}}})
		return h, st
	}
	check := func(t *testing.T, h *harness, st *state, conn *core.Conn) {
		var now state
		h.do(func() { now = *st })
		require.True(t, bytes.Equal(input, now.got), "input: got %d bytes of %d, or corrupted", len(now.got), len(input))
		require.Equal(t, len(input), now.atEnd, "RAW_RX_END after the last RAW_RX")
		require.Equal(t, 1, h.rec.count(is(core.ReasonRawRxEnd, conn)), "RAW_RX_END")
		require.Greater(t, h.rec.count(is(core.ReasonRawWriteable, conn)), 1, "WRITEABLEs for the answer")
		require.Positive(t, now.held, "CloseWrite came with output held (narrow buffers)")
	}
	t.Run("Unpaused", func(t *testing.T) {
		h, st := rig(t, false)
		conn, cli := h.adoptNarrowPair(t)
		h.start()
		write(t, cli, input)
		require.NoError(t, cli.CloseWrite())
		h.answeredThenEOF(t, conn, cli, answer, nil, nil)
		check(t, h, st, conn)
	})
	t.Run("Paused", func(t *testing.T) {
		h, st := rig(t, true)
		conn, cli := h.adoptNarrowPair(t)
		// Input and end are there before the first read.
		write(t, cli, input)
		require.NoError(t, cli.CloseWrite())
		h.start()
		h.rec.waitEvent(t, "the first RAW_RX", is(core.ReasonRawRX, conn))
		// Resume from a thread timer: by then the end has been in the
		// kernel (or in netpoll's hands) for five CloseTimeouts.
		resumed := make(chan error, 1)
		var err error
		h.do(func() {
			_, err = h.th.AfterFunc(later, func() {
				ends, rxs := h.rec.count(is(core.ReasonRawRxEnd, conn)), h.rec.count(is(core.ReasonRawRX, conn))
				switch {
				case ends != 0 || rxs != 1:
					resumed <- fmt.Errorf("paused: %d RAW_RX_END and %d RAW_RX, want 0 and 1", ends, rxs)
				case conn.Closed():
					resumed <- fmt.Errorf("closed while paused")
				default:
					resumed <- conn.RxFlowControl(true)
				}
			})
		})
		require.NoError(t, err)
		require.NoError(t, waitCh(t, resumed, "the resume"))
		h.answeredThenEOF(t, conn, cli, answer, nil, nil)
		check(t, h, st, conn)
		require.Equal(t, (len(input)+1023)>>10, h.rec.count(is(core.ReasonRawRX, conn)), "RAW_RX of 1 KiB chunks")
	})
}

// A half-open connection whose application is not writing (a proxy
// waiting for its upstream's answer) still learns that its peer reset it:
// the peer sends a request, ends it with its FIN, the application gets
// RAW_RX_END and does nothing, and the peer resets the connection
// (SO_LINGER 0). Where the backend declares evlib.CapHangupWithoutInterest,
// the core keeps the connection watched with interest 0 and RAW_CLOSE comes
// with the reset (ECONNRESET; waited for with the hang guard, no time
// asserted, and no idle timeout to race it); elsewhere nothing tells the
// core, and Info.IdleTimeout, its only bound, closes it with ErrTimeout. "Quiet" is the same connection
// whose peer does not reset: watched with interest 0 where declared, out of
// the poll set elsewhere, it keeps the loop asleep while a thread timer
// runs out (a bounded number of waits).
func (s *suite) testHalfOpenPeerReset(t *testing.T) {
	declared := s.desc.Caps&evlib.CapHangupWithoutInterest != 0
	rig := func(t *testing.T, idle time.Duration) (*harness, *core.Conn, *net.TCPConn) {
		h := s.newHarness(t, core.Info{IdleTimeout: idle, Protocols: []core.Protocol{
			{Name: "halfopen", AllowHalfOpen: true}}})
		srv, cli := tcpPair(t)
		conn, err := h.ctx.AdoptConn(srv, "")
		require.NoError(t, err)
		h.start()
		write(t, cli, []byte("request"))
		require.NoError(t, cli.CloseWrite())
		h.rec.waitEvent(t, "RAW_RX_END", is(core.ReasonRawRxEnd, conn))
		return h, conn, cli
	}
	t.Run("Reset", func(t *testing.T) {
		// Only where the reset goes unnoticed does the idle timeout bound
		// the wait: where it is reported, a timeout racing it on a slow
		// machine would close the connection first.
		idle := 300 * time.Millisecond
		if declared {
			idle = 0
		}
		h, conn, cli := rig(t, idle)
		require.NoError(t, cli.SetLinger(0))
		require.NoError(t, cli.Close())
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
		if declared {
			var oe *core.OpError
			require.ErrorAs(t, e.err, &oe, "RAW_CLOSE of a half-open connection reset by its peer")
			require.ErrorIs(t, e.err, unix.ECONNRESET, "RAW_CLOSE of a half-open connection reset by its peer (evlib.CapHangupWithoutInterest declared)")
		} else {
			require.ErrorIs(t, e.err, core.ErrTimeout, "RAW_CLOSE of a half-open connection reset by its peer: the idle timeout, as evlib.CapHangupWithoutInterest is not declared")
		}
		require.Equal(t, 1, h.rec.count(is(core.ReasonRawRxEnd, conn)), "RAW_RX_END")
		h.rec.verify(t)
	})
	t.Run("Quiet", func(t *testing.T) {
		h, conn, _ := rig(t, 0)
		h.sync()
		ev, watched := h.rec.watchedFD(conn.FD())
		if declared {
			require.True(t, watched && ev == 0, "a half-open connection after RAW_RX_END is watched with interest 0 for its peer's reset (evlib.CapHangupWithoutInterest): watched %v, interest %v", watched, ev)
		} else {
			require.False(t, watched, "a half-open connection after RAW_RX_END is out of the poll set (no evlib.CapHangupWithoutInterest), yet watched with %v", ev)
		}
		var w0, w1 uint64
		var err error
		fired := make(chan struct{})
		h.do(func() {
			w0 = h.waits()
			_, err = h.th.AfterFunc(200*time.Millisecond, func() {
				w1 = h.waits()
				close(fired)
			})
		})
		require.NoError(t, err)
		waitCh(t, fired, "a 200ms timer")
		require.LessOrEqual(t, w1-w0, uint64(10), "the loop waited %d times while a half-open connection was idle: it spins", w1-w0)
		require.Zero(t, h.rec.count(is(core.ReasonRawClose, conn)), "RAW_CLOSE of the half-open connection")
		require.Equal(t, 1, h.rec.count(is(core.ReasonRawRxEnd, conn)), "RAW_RX_END")
		h.rec.verify(t)
	})
}

// CloseWrite shuts the write side down once the output the core holds has
// left, and the connection goes on reading: an answer written whole in one
// Write (most of it held: narrow buffers) and CloseWrite reach the peer,
// then end of stream; what the peer sends afterwards comes in RAW_RX; the
// peer's close then closes the connection with io.EOF (with AllowHalfOpen,
// after RAW_RX_END).
func (s *suite) testCloseWrite(t *testing.T) {
	for _, halfOpen := range []bool{false, true} {
		name := "Default"
		if halfOpen {
			name = "AllowHalfOpen"
		}
		t.Run(name, func(t *testing.T) {
			answer := pattern(41, 4<<20)
			more := pattern(42, 100<<10)
			var got []byte
			held := -1
			cb := func(ev core.Event) error {
				c := ev.Conn
				switch ev.Reason {
				case core.ReasonRawRX:
					got = append(got, ev.Data...)
				case core.ReasonRawWriteable:
					if _, err := c.Write(answer); err != nil {
						return err
					}
					held = c.Buffered()
					return c.CloseWrite()
				}
				return nil
			}
			h := s.newHarness(t, core.Info{CloseTimeout: time.Minute, Protocols: []core.Protocol{
				{Name: "closewrite", Callback: cb, AllowHalfOpen: halfOpen}}})
			conn, cli := h.adoptNarrowPair(t)
			require.NoError(t, conn.CallbackOnWritable())
			h.start()
			if a := readFull(t, cli, len(answer)); !bytes.Equal(answer, a) {
				t.Fatalf("conformance: answer corrupted")
			}
			expectOrderlyEOF(t, cli)
			var n int
			h.do(func() { n = held })
			require.Positive(t, n, "CloseWrite came with output held (narrow buffers)")

			write(t, cli, more)
			waitUntil(t, "the input sent after CloseWrite", func() bool {
				h.do(func() { n = len(got) })
				return n >= len(more)
			})
			require.NoError(t, cli.Close())
			e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
			require.ErrorIs(t, e.err, io.EOF)
			require.True(t, bytes.Equal(more, got), "input after CloseWrite: got %d bytes of %d, or corrupted", len(got), len(more))
			require.Equal(t, 1, h.rec.count(is(core.ReasonRawWriteable, conn)), "RAW_WRITEABLE")
			ends := 0
			if halfOpen {
				ends = 1
			}
			require.Equal(t, ends, h.rec.count(is(core.ReasonRawRxEnd, conn)), "RAW_RX_END")
			h.rec.verify(t)
		})
	}
}

// A reset that follows CloseWrite reads as a reset: the application
// writes an answer and calls CloseWrite, the peer reads it and the end of
// stream, then resets (SO_LINGER 0), and RAW_CLOSE says ECONNRESET, never
// io.EOF, which would pass a cut-off stream for a whole one. Once our FIN
// went out, the socket ends in the same state (TCP CLOSE) after the peer's
// FIN as after its reset, so a backend whose library reads the kernel
// itself, and so takes the reset's error, must tell them apart some other
// way. "Unpaused" reads on; "Paused" pauses rx with all input read and
// resumes once the reset arrived; "PausedMoreInput" has the peer send more
// while rx is paused, before it resets. "ReadBeforeAdopt" has part of the
// input read before the socket is adopted, and "ReadBeforeAdoptOrderly"
// is the same with the peer's orderly close instead of the reset: io.EOF.
func (s *suite) testCloseWritePeerReset(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		pause, more, orderly bool
		readFirst            int // of the input, read before AdoptConn
	}{
		{name: "Unpaused"}, {name: "Paused", pause: true}, {name: "PausedMoreInput", pause: true, more: true},
		{name: "ReadBeforeAdopt", readFirst: 300}, {name: "ReadBeforeAdoptOrderly", readFirst: 300, orderly: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			input, answer := pattern(51, 1000), pattern(52, 1000)
			got := 0
			cb := func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawRX:
					got += len(ev.Data)
				case core.ReasonRawWriteable:
					if _, err := ev.Conn.Write(answer); err != nil {
						return err
					}
					return ev.Conn.CloseWrite()
				}
				return nil
			}
			h := s.newHarness(t, core.Info{CloseTimeout: time.Minute, Protocols: []core.Protocol{
				{Name: "closewritereset", Callback: cb}}})
			srv, cli := tcpPair(t)
			if tc.readFirst > 0 {
				write(t, cli, input)
				require.Equal(t, input[:tc.readFirst], readFull(t, srv, tc.readFirst))
			}
			conn, err := h.ctx.AdoptConn(srv, "")
			require.NoError(t, err)
			h.start()
			if tc.readFirst == 0 {
				write(t, cli, input)
			}
			waitUntil(t, "RAW_RX of the input", func() bool {
				var n int
				h.do(func() { n = got })
				return n == len(input)-tc.readFirst
			})
			h.do(func() {
				if tc.pause {
					err = conn.RxFlowControl(false)
				}
				if err == nil {
					err = conn.CallbackOnWritable()
				}
			})
			require.NoError(t, err)
			// Our FIN reached the peer before it resets.
			if a := readFull(t, cli, len(answer)); !bytes.Equal(answer, a) {
				t.Fatalf("conformance: answer corrupted")
			}
			expectOrderlyEOF(t, cli)
			if tc.more {
				write(t, cli, pattern(53, 64<<10))
			}
			if !tc.orderly {
				require.NoError(t, cli.SetLinger(0))
			}
			require.NoError(t, cli.Close())
			if tc.pause {
				// The application's socket hung up: the reset is there.
				// (Nothing held, the core may have closed it already.)
				waitUntil(t, "the reset at the application's socket", func() bool {
					hup := false
					h.do(func() {
						if hup = conn.Closed(); hup {
							return
						}
						p := []unix.PollFd{{Fd: int32(conn.FD())}}
						n, err := unix.Poll(p, 0)
						hup = err == nil && n > 0 && p[0].Revents&unix.POLLHUP != 0
					})
					return hup
				})
				h.do(func() {
					if !conn.Closed() {
						err = conn.RxFlowControl(true)
					}
				})
				require.NoError(t, err)
			}
			e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
			if tc.orderly {
				require.ErrorIs(t, e.err, io.EOF, "RAW_CLOSE of a connection whose peer closed after CloseWrite")
				h.rec.verify(t)
				return
			}
			require.NotErrorIs(t, e.err, io.EOF, "RAW_CLOSE of a connection reset by its peer after CloseWrite")
			require.ErrorIs(t, e.err, unix.ECONNRESET, "RAW_CLOSE of a connection reset by its peer after CloseWrite")
			h.rec.verify(t)
		})
	}
}

// CloseWrite's errors: after it, Write and CallbackOnWritable (also in the
// RAW_WRITEABLE that called it) and a second CloseWrite say ErrWriteClosed;
// on a datagram socket or a file it is ErrInvalid, on a closing or closed
// connection ErrClosed.
func (s *suite) testCloseWriteBadInput(t *testing.T) {
	var inWriteable []error
	cb := func(ev core.Event) error {
		if ev.Reason == core.ReasonRawWriteable {
			c := ev.Conn
			_, werr := c.Write([]byte("last"))
			inWriteable = append(inWriteable, werr, c.CloseWrite())
			_, werr = c.Write([]byte("x"))
			inWriteable = append(inWriteable, werr, c.CallbackOnWritable())
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "bad", Callback: cb}}})
	h.start()
	srv, cli := tcpPair(t)
	var conn *core.Conn
	var err error
	h.do(func() {
		conn, err = h.ctx.AdoptConn(srv, "")
		if err == nil {
			err = conn.CallbackOnWritable()
		}
	})
	require.NoError(t, err)
	require.Equal(t, []byte("last"), readFull(t, cli, 4))
	expectOrderlyEOF(t, cli)
	var errs []error
	h.do(func() {
		errs = append(errs, inWriteable...)
		_, err := conn.Write([]byte("x"))
		errs = append(errs, err, conn.CallbackOnWritable(), conn.CloseWrite())
	})
	require.Len(t, errs, 7)
	require.NoError(t, errs[0], "Write before CloseWrite")
	require.NoError(t, errs[1], "CloseWrite")
	for i, what := range []string{"Write after CloseWrite in its WRITEABLE", "CallbackOnWritable after CloseWrite in its WRITEABLE",
		"Write after CloseWrite", "CallbackOnWritable after CloseWrite", "a second CloseWrite"} {
		require.ErrorIs(t, errs[2+i], core.ErrWriteClosed, what)
	}

	var closing, closed error
	h.do(func() {
		if err := conn.Close(); err != nil {
			closing = err
			return
		}
		closing = conn.CloseWrite()
	})
	require.ErrorIs(t, closing, core.ErrClosed, "CloseWrite after Close")
	h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
	h.do(func() { closed = conn.CloseWrite() })
	require.ErrorIs(t, closed, core.ErrClosed, "CloseWrite of a closed connection")

	h.do(func() {
		var u *core.Conn
		if u, err = h.ctx.ListenUDP("udp4", "127.0.0.1:0", ""); err != nil {
			return
		}
		err = u.CloseWrite()
		u.Close()
	})
	require.ErrorIs(t, err, core.ErrInvalid, "CloseWrite of a UDP socket")

	if s.desc.Caps&evlib.CapFiles != 0 {
		var p [2]int
		require.NoError(t, nonblockPipe(&p))
		t.Cleanup(func() { unix.Close(p[1]) })
		h.do(func() {
			var f *core.Conn
			if f, err = h.ctx.AdoptFile(p[0], ""); err != nil {
				unix.Close(p[0])
				return
			}
			err = f.CloseWrite()
			f.Close()
		})
		require.ErrorIs(t, err, core.ErrInvalid, "CloseWrite of a file")
	}
	h.rec.verify(t)
}
