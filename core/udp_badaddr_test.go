//go:build unix

package core_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
)

// A WriteTo refused for its address sends nothing and uses up nothing: the
// callback may still send its datagram. The refusal used to take the
// callback's one write, so the next WriteTo said ErrNotWritable.
func TestWriteToBadAddressKeepsTheWrite(t *testing.T) {
	cl, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer cl.Close()
	to := cl.LocalAddr().(*net.UDPAddr).AddrPort()
	var badErr, goodErr error
	done := false
	ctx, err := core.New(core.Info{EventLib: "epoll", Protocols: []core.Protocol{{Name: "udp", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			_, badErr = ev.Conn.WriteTo([]byte("x"), netip.AddrPort{})
			_, goodErr = ev.Conn.WriteTo([]byte("hello"), to)
			done = true
		}
		return nil
	}}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	_, err = ctx.ListenUDP("udp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	serviceUntil(t, ctx, func() bool { return done })
	require.ErrorIs(t, badErr, core.ErrInvalid)
	require.NoError(t, goodErr)
	buf := make([]byte, 16)
	cl.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _, err := cl.ReadFrom(buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf[:n]))
}

// Write on a datagram socket with no peer (ListenUDP's, whose datagrams
// WriteTo addresses) is the call's mistake, not the socket's failure: it
// used to close the socket, a UDP server's only one, with EDESTADDRREQ.
func TestWriteOnUnconnectedUDPKeepsTheSocket(t *testing.T) {
	var wErr error
	closed, done := false, false
	ctx, err := core.New(core.Info{EventLib: "epoll", Protocols: []core.Protocol{{Name: "udp", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			_, wErr = ev.Conn.Write([]byte("x"))
			done = true
		case core.ReasonRawClose:
			closed = true
		}
		return nil
	}}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	c, err := ctx.ListenUDP("udp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	serviceUntil(t, ctx, func() bool { return done })
	require.NoError(t, ctx.Thread(0).Service(0))
	require.ErrorIs(t, wErr, core.ErrInvalid)
	require.False(t, closed)
	require.False(t, c.Closed())
}
