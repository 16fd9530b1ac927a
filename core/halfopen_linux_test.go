package core_test

import (
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/simloop"
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
