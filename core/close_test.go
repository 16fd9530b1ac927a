//go:build unix

package core_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// closeServer writes payload once in the first WRITEABLE, then closes.
func closeServer(t *testing.T, lib string, info core.Info, payload []byte, closed chan error) (*core.Context, string) {
	info.EventLib = lib
	info.Protocols = []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			if _, err := ev.Conn.Write(payload); err != nil {
				return err
			}
			return ev.Conn.Close()
		case core.ReasonRawClose:
			closed <- ev.Err
		}
		return nil
	}}}
	ctx, err := core.New(info)
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	return ctx, ln.Addr().String()
}

// Close waits for what the kernel did not take yet: a slow reader still
// gets every byte, then end of stream.
func TestCloseWhenDrained(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) { checkDrained(t, lib, core.Info{}, false) })
	}
}

// A peer that shut its write side down, as a client waiting for the whole
// reply does, still gets every byte Close waits for: its end of stream
// says it sends no more, not that it stopped reading.
func TestCloseDrainsToHalfClosedPeer(t *testing.T) {
	for _, lib := range backends {
		for _, graceful := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/graceful=%v", lib, graceful), func(t *testing.T) {
				checkDrained(t, lib, core.Info{GracefulClose: graceful}, true)
			})
		}
	}
}

// checkDrained has a closeServer write 4 MiB and close, and checks that a
// client reading slowly gets all of it and the server a nil RAW_CLOSE.
// halfClose: the client shuts its write side down first.
func checkDrained(t *testing.T, lib string, info core.Info, halfClose bool) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	closed := make(chan error, 1)
	info.CloseTimeout = 30 * time.Second
	ctx, addr := closeServer(t, lib, info, payload, closed)
	defer ctx.Destroy()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	if halfClose {
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
	}
	// After a while: the server meets a full socket (and the FIN).
	b := readAllServicing(t, ctx, c, 50*time.Millisecond)
	require.True(t, bytes.Equal(payload, b), "all %d bytes, got %d", len(payload), len(b))
	serviceUntil(t, ctx, func() bool { return len(closed) > 0 })
	require.NoError(t, <-closed)
}

// Close stops TIMER: while a connection drains, nothing but RAW_CLOSE comes.
func TestNoTimerWhileDraining(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var conn *core.Conn
			var timers int
			var closedAt time.Time
			ctx, err := core.New(core.Info{EventLib: lib, GracefulClose: true, CloseTimeout: time.Minute,
				Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
					switch ev.Reason {
					case core.ReasonRawAdopt:
						conn = ev.Conn
						if err := ev.Conn.SetTimer(20 * time.Millisecond); err != nil {
							return err
						}
						return ev.Conn.CallbackOnWritable()
					case core.ReasonRawWriteable:
						if _, err := ev.Conn.Write([]byte("bye")); err != nil {
							return err
						}
						closedAt = time.Now()
						return ev.Conn.Close()
					case core.ReasonTimer:
						timers++
					}
					return nil
				}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			dialListener(t, ctx) // open: the connection drains, waiting for its FIN
			serviceUntil(t, ctx, func() bool { return conn != nil && conn.Draining() })
			serviceUntil(t, ctx, func() bool { return time.Since(closedAt) > 100*time.Millisecond }) // past the timer's due time
			require.True(t, conn.Draining())
			require.Zero(t, timers, "TIMER while draining")
		})
	}
}

// readAllServicing reads c to its end, starting after delay, on another
// goroutine while this one services ctx, and returns what it read.
func readAllServicing(t *testing.T, ctx *core.Context, c net.Conn, delay time.Duration) []byte {
	got := make(chan []byte)
	go func() {
		time.Sleep(delay)
		b, _ := io.ReadAll(c)
		got <- b
	}()
	var b []byte
	serviceUntil(t, ctx, func() bool {
		select {
		case b = <-got:
			return true
		default:
			return false
		}
	})
	return b
}

// With GracefulClose the write side is shut down and the connection stays
// until the peer closes; a peer that never does is cut off at CloseTimeout.
func TestGracefulClose(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			closed := make(chan error, 1)
			ctx, addr := closeServer(t, lib, core.Info{GracefulClose: true, CloseTimeout: 10 * time.Second}, []byte("bye"), closed)
			defer ctx.Destroy()
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			b := readAllServicing(t, ctx, c, 0) // returns at the server's FIN
			require.Equal(t, "bye", string(b))
			require.Empty(t, closed, "still open: waiting for the peer")
			c.Close()
			serviceUntil(t, ctx, func() bool { return len(closed) > 0 })
			require.NoError(t, <-closed)

			ctx2, addr2 := closeServer(t, lib, core.Info{GracefulClose: true, CloseTimeout: 30 * time.Millisecond}, []byte("bye"), closed)
			defer ctx2.Destroy()
			c2, err := net.Dial("tcp", addr2)
			require.NoError(t, err)
			defer c2.Close() // never closes before the timeout
			serviceUntil(t, ctx2, func() bool { return len(closed) > 0 })
			require.ErrorIs(t, <-closed, core.ErrTimeout)
		})
	}
}

// A pipe served as a stream (AdoptFD of its write end) has no FIN to send
// or to wait for: a graceful Close closes it once its output has left,
// with a nil Err, while its reader is still there. It used to wait for the
// reader's end and then report a read of the write-only fd failing.
func TestGracefulCloseOfPipeStream(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var closeErr error
			closes := 0
			ctx, err := core.New(core.Info{EventLib: lib, GracefulClose: true, CloseTimeout: time.Hour,
				Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
					if ev.Reason == core.ReasonRawClose {
						closes++
						closeErr = ev.Err
					}
					return nil
				}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			var p [2]int
			require.NoError(t, unix.Pipe(p[:]))
			defer unix.Close(p[0])
			c, err := ctx.AdoptFD(p[1], "")
			require.NoError(t, err)
			require.NoError(t, c.Close())
			serviceUntil(t, ctx, func() bool { return closes > 0 })
			require.Equal(t, 1, closes)
			require.NoError(t, closeErr)
			var b [1]byte
			n, err := unix.Read(p[0], b[:])
			require.NoError(t, err)
			require.Zero(t, n, "the reader sees the end of the pipe")
		})
	}
}

// Close inside a callback takes effect when the callback returns, but the
// connection is closing from the call on: asking for WRITEABLE or writing
// after it is ErrClosed, not a request that can never be granted or bytes
// sent past the close.
func TestCloseInCallbackEndsWrites(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var afterClose []error
			closed := make(chan error, 1)
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawAdopt:
					return ev.Conn.CallbackOnWritable()
				case core.ReasonRawWriteable:
					require.NoError(t, ev.Conn.Close())
					_, werr := ev.Conn.Write([]byte("late"))
					afterClose = append(afterClose, werr, ev.Conn.CallbackOnWritable())
				case core.ReasonRawClose:
					closed <- ev.Err
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			peer := dialListener(t, ctx)
			serviceUntil(t, ctx, func() bool { return len(closed) == 1 })
			require.NoError(t, <-closed)
			require.Len(t, afterClose, 2)
			for _, err := range afterClose {
				require.ErrorIs(t, err, core.ErrClosed)
			}
			n, err := peer.Read(make([]byte, 8))
			require.Zero(t, n, "bytes written after Close reached the peer")
			require.ErrorIs(t, err, io.EOF)
		})
	}
}

// Close of a connection whose stream ended while its rx was paused (here
// by a reset, its input still kept) closes it at once, GracefulClose or
// not: the peer's end was read already, so there is nothing to wait for.
// With GracefulClose it waited for that end again, with read interest on
// an fd that stays readable, spinning the loop until CloseTimeout.
func TestGracefulCloseAfterHangup(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var conn *core.Conn
			parked := make(chan struct{}, 1)
			closed := make(chan error, 1)
			ctx, err := core.New(core.Info{EventLib: lib, GracefulClose: true, CloseTimeout: time.Minute,
				Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
					switch ev.Reason {
					case core.ReasonRawAdopt:
						conn = ev.Conn
						return ev.Conn.RxFlowControl(false)
					case core.ReasonDelPollFD:
						if ev.Conn != nil && ev.Conn == conn && !conn.Closed() {
							parked <- struct{}{} // out of the poll set: the core read the reset
						}
					case core.ReasonRawClose:
						closed <- ev.Err
					}
					return nil
				}}}})
			require.NoError(t, err)
			srv, cli := testkit.TCPPair(t)
			_, err = ctx.AdoptConn(srv, "p")
			require.NoError(t, err)
			_, err = cli.Write([]byte("kept"))
			require.NoError(t, err)
			require.NoError(t, cli.(*net.TCPConn).SetLinger(0))
			require.NoError(t, cli.Close())
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()
			select {
			case <-parked:
			case <-time.After(10 * time.Second):
				t.Fatal("the core did not take the reset connection out of the poll set")
			}
			stats := ctx.Stats()
			require.NoError(t, ctx.Thread(0).Post(func() { assert.NoError(t, conn.Close()) }))
			select {
			case err := <-closed:
				require.NoError(t, err, "RAW_CLOSE after Close")
			case <-time.After(10 * time.Second):
				t.Fatalf("no RAW_CLOSE after Close (%d waits since)", ctx.Stats().Waits-stats.Waits)
			}
			require.NoError(t, ctx.Destroy())
			<-ctx.Done()
			require.NoError(t, <-done)
		})
	}
}

// Close inside RAW_RX ends RAW_RX also when the connection does not close
// at once but waits to drain its output or, with GracefulClose, for the
// peer: the rest of a read that RxChunk split used to be delivered to it,
// in RAW_RX after RAW_RX, although nothing but RAW_CLOSE may follow Close.
// The conformance suite's Model test found it.
func TestSimCloseInsideRXEndsRX(t *testing.T) {
	for _, graceful := range []bool{false, true} {
		t.Run(fmt.Sprintf("graceful=%v", graceful), func(t *testing.T) {
			var payload []byte
			if !graceful {
				payload = make([]byte, 8<<20) // more than any socket buffer holds
			}
			var rx int
			s := newSim(t, simloop.NewClock(), core.Info{GracefulClose: graceful, CloseTimeout: time.Minute, Protocols: []core.Protocol{{
				Name: "p", RxChunk: 4, Callback: func(ev core.Event) error {
					switch ev.Reason {
					case core.ReasonRawWriteable:
						_, err := ev.Conn.Write(payload)
						return err
					case core.ReasonRawRX:
						if rx++; rx == 1 {
							return ev.Conn.Close()
						}
					}
					return nil
				},
			}}})
			c, peer := s.adopt()
			if payload != nil {
				require.NoError(t, c.CallbackOnWritable())
				s.runTo(time.Second)
				require.NotZero(t, c.Buffered(), "the peer reads nothing, so output is pending")
			}
			_, err := unix.Write(peer, []byte("0123456789abcdef")) // one read, four RAW_RX
			require.NoError(t, err)
			s.runTo(2 * time.Second)
			require.True(t, c.Draining())
			require.Equal(t, 1, rx, "RAW_RX after Close")
		})
	}
}

// Two connections closed in one callback close one after the other, each
// inside its own LOCK_POLL/UNLOCK_POLL: the second close used to run from
// the first one's LOCK_POLL callback, which emptied the queue of closes
// again as it returned, so an application's poll-fd lock saw LOCK_POLL
// inside LOCK_POLL. The Model test found it once a relay's target's Close
// aborted its source.
func TestCloseTwoInOneCallbackNotNested(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var a, b *core.Conn
			locked := -1
			var problems []string
			closed := make(chan struct{}, 2)
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonLockPoll:
					if locked >= 0 {
						problems = append(problems, fmt.Sprintf("LOCK_POLL of fd %d inside that of fd %d", ev.Poll.FD, locked))
					}
					locked = ev.Poll.FD
				case core.ReasonUnlockPoll:
					locked = -1
				case core.ReasonTimer:
					assert.NoError(t, a.Close())
					assert.NoError(t, b.Abort())
				case core.ReasonRawClose:
					closed <- struct{}{}
				}
				return nil
			}}}})
			require.NoError(t, err)
			srvA, cliA := testkit.TCPPair(t)
			defer cliA.Close()
			srvB, cliB := testkit.TCPPair(t)
			defer cliB.Close()
			a, err = ctx.AdoptConn(srvA, "p")
			require.NoError(t, err)
			b, err = ctx.AdoptConn(srvB, "p")
			require.NoError(t, err)
			require.NoError(t, a.SetTimer(0))
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()
			for range 2 {
				select {
				case <-closed:
				case <-time.After(10 * time.Second):
					t.Fatal("no RAW_CLOSE after Close and Abort")
				}
			}
			require.NoError(t, ctx.Destroy())
			<-ctx.Done()
			require.NoError(t, <-done)
			require.Empty(t, problems)
		})
	}
}

// Close of a connection from inside its own ADD_POLL_FD, as it is adopted,
// is queued like any Close from a callback: the connection gets RAW_ADOPT,
// then RAW_CLOSE with a nil Err, its socket deleted from the application's
// set and closed once; the adoption does not go on with a socket closed
// under it.
func TestAdoptClosedInsideItsAddPollFD(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var got []core.Reason
			var closeErr, closedWith error
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				if ev.Conn == nil {
					return nil
				}
				switch ev.Reason {
				case core.ReasonLockPoll, core.ReasonUnlockPoll:
					return nil
				case core.ReasonAddPollFD:
					closeErr = ev.Conn.Close()
				case core.ReasonRawClose:
					closedWith = ev.Err
				}
				got = append(got, ev.Reason)
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			require.NoError(t, err)
			defer unix.Close(p[1])
			require.NoError(t, unix.SetNonblock(p[1], true))
			c, err := ctx.AdoptFD(p[0], "p")
			require.NoError(t, err)
			require.NoError(t, closeErr)
			require.True(t, c.Closed(), "closed when AdoptFD returned")
			require.NoError(t, ctx.Thread(0).Service(0))
			require.Equal(t, []core.Reason{core.ReasonAddPollFD, core.ReasonRawAdopt, core.ReasonDelPollFD, core.ReasonRawClose}, got)
			require.NoError(t, closedWith)
			n, err := unix.Read(p[1], make([]byte, 1))
			require.NoError(t, err)
			require.Zero(t, n, "the peer reads the end of stream: the socket was closed")
		})
	}
}

// An interest change the application makes inside a poll-fd callback
// about a connection is made once the change being reported is done, so
// that the poll-fd changes it is told of never nest and each CHANGE_MODE's
// PrevEvents is what it was told last: RxFlowControl(true) in its
// ADD_POLL_FD as it is adopted changes nothing (it is added for reading),
// and in the CHANGE_MODE_POLL_FD that stops reading it (paused in
// RAW_ADOPT, with input come) it watches the connection for reading again
// after that change, so the input comes in RAW_RX.
func TestInterestChangedInsidePollFD(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var problems []string
			locked := false
			told := map[int]evlib.Events{}
			rx := 0
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonLockPoll:
					if locked {
						problems = append(problems, fmt.Sprintf("LOCK_POLL fd %d inside another", ev.Poll.FD))
					}
					locked = true
				case core.ReasonUnlockPoll:
					locked = false
				case core.ReasonAddPollFD:
					told[ev.Poll.FD] = ev.Poll.Events
					if ev.Conn != nil {
						require.NoError(t, ev.Conn.RxFlowControl(true))
					}
				case core.ReasonChangeModePollFD:
					if prev := told[ev.Poll.FD]; prev != ev.Poll.PrevEvents {
						problems = append(problems, fmt.Sprintf("CHANGE_MODE fd %d from %v, told %v", ev.Poll.FD, ev.Poll.PrevEvents, prev))
					}
					told[ev.Poll.FD] = ev.Poll.Events
					if ev.Conn != nil && ev.Poll.Events&evlib.Readable == 0 {
						require.NoError(t, ev.Conn.RxFlowControl(true))
					}
				case core.ReasonDelPollFD:
					delete(told, ev.Poll.FD)
				case core.ReasonRawAdopt:
					require.NoError(t, ev.Conn.RxFlowControl(false))
				case core.ReasonRawRX:
					rx += len(ev.Data)
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			p := nonblockSocketpair(t)
			defer unix.Close(p[1])
			_, err = ctx.AdoptFD(p[0], "p")
			require.NoError(t, err)
			_, err = unix.Write(p[1], []byte("ping"))
			require.NoError(t, err)
			serviceUntil(t, ctx, func() bool { return rx == 4 || len(problems) > 0 })
			require.Empty(t, problems)
			require.Equal(t, evlib.Readable, told[p[0]], "watched for reading, as the application was told")
		})
	}
}

// A connection closed in its own ADD_POLL_FD as it is adopted with a read
// buffer (WithReadbuf) gets RAW_ADOPT, then RAW_CLOSE, and never the
// buffer in RAW_RX: Close drops the input not delivered, also when, with
// GracefulClose, the close waits for the peer's end of stream.
func TestAdoptWithReadbufClosedInsideItsAddPollFD(t *testing.T) {
	for _, lib := range backends {
		for _, graceful := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/graceful=%v", lib, graceful), func(t *testing.T) {
				var got []core.Reason
				ctx, err := core.New(core.Info{EventLib: lib, GracefulClose: graceful, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
					if ev.Conn == nil {
						return nil
					}
					switch ev.Reason {
					case core.ReasonLockPoll, core.ReasonUnlockPoll, core.ReasonAddPollFD, core.ReasonDelPollFD, core.ReasonChangeModePollFD:
						if ev.Reason == core.ReasonAddPollFD {
							require.NoError(t, ev.Conn.Close())
						}
						return nil
					}
					got = append(got, ev.Reason)
					return nil
				}}}})
				require.NoError(t, err)
				defer ctx.Destroy()
				p := nonblockSocketpair(t)
				defer unix.Close(p[1])
				c, err := ctx.AdoptFD(p[0], "p", core.WithReadbuf([]byte("kept")))
				require.NoError(t, err)
				require.NoError(t, ctx.Thread(0).Service(0))
				// With GracefulClose the close waits for the peer's end.
				require.NoError(t, unix.Shutdown(p[1], unix.SHUT_WR))
				serviceUntil(t, ctx, c.Closed)
				require.Equal(t, []core.Reason{core.ReasonRawAdopt, core.ReasonRawClose}, got)
			})
		}
	}
}

// A relay's source, paused, whose peer closes is parked (out of the poll
// set, the end not read yet); closed there, in its DEL_POLL_FD, with
// GracefulClose, it closes: the close, not knowing of the end, watches it
// again for the peer's end of stream once the removal is done, and
// RAW_CLOSE comes with a nil Err. That change was lost: the connection
// stayed parked, its interest set, until CloseTimeout closed it.
func TestCloseInsideParkingDelPollFD(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var src *core.Conn
			var closedWith error
			dels := 0
			ctx, err := core.New(core.Info{EventLib: lib, GracefulClose: true, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				if ev.Conn == nil || ev.Conn != src {
					return nil
				}
				switch {
				case ev.Reason == core.ReasonDelPollFD && !ev.Conn.Closed():
					dels++
					require.NoError(t, ev.Conn.Close())
				case ev.Reason == core.ReasonRawClose:
					closedWith = ev.Err
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			var peers [2]int
			var conns [2]*core.Conn
			for i := range conns {
				p := nonblockSocketpair(t)
				peers[i] = p[1]
				conns[i], err = ctx.AdoptFD(p[0], "p")
				require.NoError(t, err)
			}
			defer unix.Close(peers[1])
			require.NoError(t, conns[0].RxFlowControl(false))
			require.NoError(t, unix.Close(peers[0]))
			src = conns[0]
			require.NoError(t, src.RelayTo(conns[1]))
			serviceUntil(t, ctx, func() bool { return src.Closed() })
			require.Equal(t, 1, dels, "parked once")
			require.NoError(t, closedWith, "closed for the peer's end, not by CloseTimeout")
		})
	}
}

// nonblockSocketpair makes a unix stream socket pair, both ends
// non-blocking (SetNonblock: SOCK_NONBLOCK is Linux's).
func nonblockSocketpair(t *testing.T) [2]int {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	for _, fd := range p {
		require.NoError(t, unix.SetNonblock(fd, true))
	}
	return p
}
