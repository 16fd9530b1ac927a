//go:build unix

package core_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// RelayTo inside RAW_RX of a read that RxChunk splits: the rest of the read
// goes to the target, first and in order, and no RAW_RX follows on the
// source; it used to be delivered in RAW_RX after RAW_RX to the relay's
// source. The Model test found it.
func TestRelayToInsideSplitRX(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var src, dst *core.Conn
			var rx, afterRelay int
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", RxChunk: 512, Callback: func(ev core.Event) error {
				if ev.Reason != core.ReasonRawRX || ev.Conn != src {
					return nil
				}
				rx++
				if rx > 1 {
					afterRelay++
					return nil
				}
				return src.RelayTo(dst)
			}}}})
			require.NoError(t, err)
			srvA, cliA := testkit.TCPPair(t)
			defer cliA.Close()
			srvB, cliB := testkit.TCPPair(t)
			defer cliB.Close()
			payload := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstu"), 2048) // 62 KiB, one read
			_, err = cliA.Write(payload)
			require.NoError(t, err)
			src, err = ctx.AdoptConn(srvA, "p")
			require.NoError(t, err)
			dst, err = ctx.AdoptConn(srvB, "p")
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()
			got := make([]byte, len(payload)-512)
			require.NoError(t, cliB.SetReadDeadline(time.Now().Add(10*time.Second)))
			_, err = io.ReadFull(cliB, got)
			require.NoError(t, err)
			require.True(t, bytes.Equal(payload[512:], got), "the target's peer got the rest of the read, in order")
			require.NoError(t, ctx.Destroy())
			<-ctx.Done()
			require.NoError(t, <-done)
			require.Zero(t, afterRelay, "RAW_RX on the relay's source after RelayTo")
		})
	}
}

// RelayTo inside RAW_ADOPT of a connection adopted with WithReadbuf: the
// read buffer goes to the target first, then what the socket brings. It
// used to be kept after RAW_ADOPT, where the relay never looked.
func TestRelayToInsideAdoptTakesReadbuf(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var dst *core.Conn
			var relayErr error
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				if ev.Reason == core.ReasonRawAdopt && ev.Conn.User() == "src" {
					relayErr = ev.Conn.RelayTo(dst)
				}
				return nil
			}}}})
			require.NoError(t, err)
			srvA, cliA := testkit.TCPPair(t)
			defer cliA.Close()
			srvB, cliB := testkit.TCPPair(t)
			defer cliB.Close()
			dst, err = ctx.AdoptConn(srvB, "p")
			require.NoError(t, err)
			_, err = ctx.AdoptConn(srvA, "p", core.WithReadbuf([]byte("hello ")), core.WithUser("src"))
			require.NoError(t, err)
			require.NoError(t, relayErr)
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()
			_, err = cliA.Write([]byte("world"))
			require.NoError(t, err)
			got := make([]byte, len("hello world"))
			require.NoError(t, cliB.SetReadDeadline(time.Now().Add(10*time.Second)))
			_, err = io.ReadFull(cliB, got)
			require.NoError(t, err)
			require.Equal(t, "hello world", string(got))
			require.NoError(t, ctx.Destroy())
			<-ctx.Done()
			require.NoError(t, <-done)
		})
	}
}

// A relay's source resumed and paused again before forced service ran
// takes nothing: its hang-up came while it was paused, so the resume
// queues a pull for forced service, and the pause that follows must
// cancel it, or input (and the end of stream) would be relayed from a
// paused source. The next resume relays it all, then RAW_RX_END.
func TestSimRelayPauseCancelsQueuedPull(t *testing.T) {
	var rxEnd int
	s := newSim(t, simloop.NewClock(), core.Info{Protocols: []core.Protocol{{Name: "p", AllowHalfOpen: true, Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRxEnd {
			rxEnd++
		}
		return nil
	}}}})
	src, srcPeer := s.adoptPair()
	dst, dstPeer := s.adoptPair()
	defer unix.Close(dstPeer)
	s.passes(1)
	require.NoError(t, src.RelayTo(dst))
	require.NoError(t, src.RxFlowControl(false))
	_, err := unix.Write(srcPeer, []byte("hello"))
	require.NoError(t, err)
	require.NoError(t, unix.Close(srcPeer))
	s.passes(3) // the hang-up (POLLHUP) is reported while paused

	require.NoError(t, src.RxFlowControl(true))
	require.NoError(t, src.RxFlowControl(false))
	s.passes(3)
	buf := make([]byte, 16)
	n, err := unix.Read(dstPeer, buf)
	require.ErrorIs(t, err, unix.EAGAIN, "the target's peer read %q from a paused source", buf[:max(n, 0)])
	require.Zero(t, rxEnd, "RAW_RX_END of a paused source")
	require.True(t, src.RxPaused())

	require.NoError(t, src.RxFlowControl(true))
	s.passes(3)
	n, err = unix.Read(dstPeer, buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf[:n]))
	require.Equal(t, 1, rxEnd, "RAW_RX_END after the last byte")
}

// Closing a relay's target ends the relay without a callback to the target
// itself: nothing but RAW_CLOSE follows Abort or Close. The end of the
// relay settles the target's own end of stream only when the target stays
// open; it used to deliver RAW_RX_END to a target being aborted, whose
// peer had ended while its rx was paused. The Model test found it.
func TestSimRelayTargetCloseDeliversOnlyClose(t *testing.T) {
	for _, how := range []string{"Abort", "Close"} {
		t.Run(how, func(t *testing.T) {
			var dst *core.Conn
			var got []core.Reason
			s := newSim(t, simloop.NewClock(), core.Info{Protocols: []core.Protocol{{Name: "p", AllowHalfOpen: true, Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonLockPoll, core.ReasonUnlockPoll, core.ReasonAddPollFD, core.ReasonDelPollFD, core.ReasonChangeModePollFD:
				default:
					if ev.Conn != nil && ev.Conn == dst {
						got = append(got, ev.Reason)
					}
				}
				return nil
			}}}})
			src, srcPeer := s.adoptPair()
			defer unix.Close(srcPeer)
			var dstPeer int
			dst, dstPeer = s.adoptPair()
			s.passes(1)
			require.NoError(t, dst.RxFlowControl(false))
			require.NoError(t, src.RelayTo(dst))
			require.NoError(t, unix.Close(dstPeer))
			s.passes(3) // the target's end (a hang-up), held while its rx is paused
			require.Empty(t, got, "callbacks of a paused target")

			require.NoError(t, dst.RxFlowControl(true)) // RAW_RX_END is due in forced service
			if how == "Abort" {
				require.NoError(t, dst.Abort())
			} else {
				require.NoError(t, dst.Close())
			}
			s.passes(3)
			require.Equal(t, []core.Reason{core.ReasonRawClose}, got)
			require.True(t, src.RxPaused(), "the source of a relay whose target closed")
		})
	}
}

// A connection whose peer ended its stream, kept open while it answers,
// closes with an error when the peer then resets it, not with the end of
// stream it had read: an orderly end would tell the application its answer
// may have been read whole. Here the write that meets the reset says so
// (EPIPE, or ECONNRESET); where a backend reports the error first, the
// core asks the socket (errorAfterEnd).
func TestErrorAfterPeerEndIsNotEOF(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			closed := make(chan error, 1)
			chunk := make([]byte, 8<<20) // more than the sockets hold: the core keeps the rest
			ctx, err := core.New(core.Info{EventLib: lib, CloseTimeout: time.Minute, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawAdopt:
					return ev.Conn.CallbackOnWritable()
				case core.ReasonRawWriteable:
					_, err := ev.Conn.Write(chunk)
					return err
				case core.ReasonRawClose:
					closed <- ev.Err
				}
				return nil
			}}}})
			require.NoError(t, err)
			srv, cli := testkit.TCPPair(t)
			require.NoError(t, cli.(*net.TCPConn).CloseWrite()) // the peer's end, read at once
			_, err = ctx.AdoptConn(srv, "p")
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()
			defer func() {
				ctx.Destroy()
				<-done
			}()
			require.NoError(t, cli.(*net.TCPConn).SetLinger(0))
			require.NoError(t, cli.Close()) // then its reset, with the answer unread
			select {
			case err := <-closed:
				require.Error(t, err)
				require.NotErrorIs(t, err, io.EOF)
				if !errors.Is(err, unix.EPIPE) { // a write met the reset first
					require.ErrorIs(t, err, unix.ECONNRESET)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("no RAW_CLOSE after the peer's reset")
			}
		})
	}
}

// A relay's target whose peer reset it while its rx was paused takes no
// more output, and every call that would send on it says so alike:
// ErrClosed from Write and CallbackOnWritable, not ErrRelaying from one of
// them because the relay has not ended yet.
func TestSimRelayTargetResetSaysClosed(t *testing.T) {
	s := newSim(t, simloop.NewClock(), core.Info{})
	src, srcPeer := s.adoptPair()
	defer unix.Close(srcPeer)
	dst, dstPeer := s.adoptPair()
	s.passes(1)
	require.NoError(t, dst.RxFlowControl(false))
	require.NoError(t, src.RelayTo(dst))
	_, err := unix.Write(srcPeer, []byte("relayed, never read"))
	require.NoError(t, err)
	s.passes(3) // relayed into dstPeer, which leaves it unread
	_, err = unix.Write(dstPeer, []byte("input kept while paused"))
	require.NoError(t, err)
	// A unix stream socket closed with unread input resets its peer.
	require.NoError(t, unix.Close(dstPeer))
	s.passes(3)
	require.False(t, dst.Closed(), "a paused connection with input kept")
	require.ErrorIs(t, dst.CallbackOnWritable(), core.ErrClosed)
	_, err = dst.Write([]byte("x"))
	require.ErrorIs(t, err, core.ErrClosed)
}
