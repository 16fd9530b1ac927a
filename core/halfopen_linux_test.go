package core_test

import (
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A half-open connection whose application is not writing learns at once
// that its peer went away with input unread (a unix socket's reset, which
// Linux reports as ECONNRESET; other systems need not set an error): the
// answer it wrote after RAW_RX_END is still in the peer's socket when the
// peer closes, and the connection closes in the next pass, with
// ECONNRESET, long before its idle timeout.
func TestSimHalfOpenPeerReset(t *testing.T) {
	var reasons []core.Reason
	s := newSim(t, simloop.NewClock(), core.Info{IdleTimeout: 10 * time.Second,
		Protocols: []core.Protocol{halfOpenProtocol(&reasons, func(ev core.Event) error {
			if ev.Reason == core.ReasonRawWriteable {
				_, err := ev.Conn.Write([]byte("answer"))
				return err
			}
			return nil
		})}})
	c, peer := s.adoptPair()
	_, err := unix.Write(peer, []byte("request"))
	require.NoError(t, err)
	require.NoError(t, unix.Shutdown(peer, unix.SHUT_WR))
	s.passes(2)
	require.NoError(t, c.CallbackOnWritable())
	s.runTo(time.Second)
	require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd, core.ReasonRawWriteable}, reasons)
	require.NoError(t, unix.Close(peer)) // "answer" unread

	s.runTo(2 * time.Second)
	require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd, core.ReasonRawWriteable, core.ReasonRawClose}, reasons)
	got := s.closed[c]
	require.Equal(t, time.Second, got.at, "closed in the pass after the reset")
	var oe *core.OpError
	require.ErrorAs(t, got.err, &oe)
	require.ErrorIs(t, got.err, unix.ECONNRESET)
}

// CloseWrite on a TCP connection its peer already reset, before the core
// has heard of the reset, closes it with the reset, not with the
// ENOTCONN that shutdown(2) says of a stream no longer connected: the
// caller and RAW_CLOSE both get an error that errors.Is ECONNRESET.
func TestSimCloseWriteAfterPeerReset(t *testing.T) {
	s := newSim(t, simloop.NewClock(), core.Info{})
	srv, cli := testkit.TCPPair(t)
	c, err := s.th.Context().AdoptConn(srv, "")
	require.NoError(t, err)
	s.passes(1)
	require.NoError(t, cli.(*net.TCPConn).SetLinger(0))
	require.NoError(t, cli.Close()) // a reset, which the core has not read yet
	require.Eventually(t, func() bool {
		ti, err := unix.GetsockoptTCPInfo(c.FD(), unix.IPPROTO_TCP, unix.TCP_INFO)
		return err == nil && ti.State == 7 // TCP_CLOSE: the reset has arrived
	}, 10*time.Second, time.Millisecond)

	err = c.CloseWrite()
	require.ErrorIs(t, err, unix.ECONNRESET)
	s.passes(1)
	got, closed := s.closed[c]
	require.True(t, closed)
	var oe *core.OpError
	require.ErrorAs(t, got.err, &oe)
	require.ErrorIs(t, got.err, unix.ECONNRESET)
}
