//go:build unix

package core_test

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A connection's addresses are typed as the standard library's connection
// of the same kind types them, on every kind of socket the core adopts.
func TestConnAddrs(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var adopted []*core.Conn
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{
				Name: "addr",
				Callback: func(ev core.Event) error {
					if ev.Reason == core.ReasonRawAdopt {
						adopted = append(adopted, ev.Conn)
					}
					return nil
				},
			}}})
			require.NoError(t, err)
			defer ctx.Destroy()

			// TCP, accepted.
			cl := dialListener(t, ctx)
			serviceUntil(t, ctx, func() bool { return len(adopted) == 1 })
			c := adopted[0]
			require.Equal(t, cl.RemoteAddr(), c.LocalAddr())
			require.Equal(t, cl.LocalAddr(), c.RemoteAddr())

			// UDP: unconnected, so no peer.
			u, err := ctx.ListenUDP("udp4", "127.0.0.1:0", "")
			require.NoError(t, err)
			ua, ok := u.LocalAddr().(*net.UDPAddr)
			require.True(t, ok, "UDP LocalAddr %#v", u.LocalAddr())
			require.NotZero(t, ua.Port)
			require.Nil(t, u.RemoteAddr())
			serviceUntil(t, ctx, func() bool { return len(adopted) == 2 }) // u's RAW_ADOPT

			// Unix stream and datagram sockets.
			dir := t.TempDir()
			path := filepath.Join(dir, "s")
			uln, err := ctx.Listen("unix", path, "")
			require.NoError(t, err)
			ucl, err := net.Dial("unix", uln.Addr().String())
			require.NoError(t, err)
			defer ucl.Close()
			serviceUntil(t, ctx, func() bool { return len(adopted) == 3 })
			require.Equal(t, &net.UnixAddr{Name: path, Net: "unix"}, adopted[2].LocalAddr())

			gpath := filepath.Join(dir, "g")
			pc, err := net.ListenPacket("unixgram", gpath)
			require.NoError(t, err)
			g, err := ctx.AdoptPacketConn(pc, "")
			require.NoError(t, err)
			require.Equal(t, &net.UnixAddr{Name: gpath, Net: "unixgram"}, g.LocalAddr())

			// A pipe is no socket.
			r, w, err := os.Pipe()
			require.NoError(t, err)
			defer w.Close()
			rfd, err := unix.Dup(int(r.Fd()))
			require.NoError(t, err)
			r.Close()
			require.NoError(t, unix.SetNonblock(rfd, true))
			p, err := ctx.AdoptFile(rfd, "")
			require.NoError(t, err)
			require.Nil(t, p.LocalAddr())
			require.Nil(t, p.RemoteAddr())
		})
	}
}

// Once the core closed a connection's descriptor, its number may be
// reused at once by another file: FD says -1 and the addresses nil, rather
// than answering for a socket that is not the connection's. During
// RAW_CLOSE they still answer for the connection.
func TestClosedConnForgetsFD(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var (
				adopted       []*core.Conn
				closeFD       = -2
				closeRemote   net.Addr
				closeReported bool
			)
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{
				Name: "forget",
				Callback: func(ev core.Event) error {
					switch ev.Reason {
					case core.ReasonRawAdopt:
						adopted = append(adopted, ev.Conn)
					case core.ReasonRawClose:
						closeFD, closeRemote, closeReported = ev.Conn.FD(), ev.Conn.RemoteAddr(), true
					}
					return nil
				},
			}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
			require.NoError(t, err)
			first, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer first.Close()
			serviceUntil(t, ctx, func() bool { return len(adopted) == 1 })
			c := adopted[0]
			fd := c.FD()
			require.NoError(t, c.Close())
			serviceUntil(t, ctx, func() bool { return closeReported })
			require.Equal(t, fd, closeFD, "FD during RAW_CLOSE")
			require.Equal(t, first.LocalAddr(), closeRemote, "RemoteAddr during RAW_CLOSE")

			require.Equal(t, -1, c.FD())
			require.Nil(t, c.LocalAddr())
			require.Nil(t, c.RemoteAddr())
			require.True(t, c.Closed())

			// The next connection may well get the same number: the old
			// Conn must still not answer for it.
			second, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer second.Close()
			serviceUntil(t, ctx, func() bool { return len(adopted) == 2 })
			require.Equal(t, -1, c.FD())
			require.Nil(t, c.RemoteAddr())
			require.Equal(t, second.LocalAddr(), adopted[1].RemoteAddr())

			// The listener too.
			lfd := ln.FD()
			require.GreaterOrEqual(t, lfd, 0)
			require.NoError(t, ln.Close())
			serviceUntil(t, ctx, func() bool { return ln.FD() == -1 })
		})
	}
}

// A unix listener's socket file is removed when the listener closes,
// Close or Destroy, unless SetUnlinkOnClose(false) said to keep it, as
// net's listener does; adopting a net listener told to keep it could not
// keep it.
func TestListenerSetUnlinkOnClose(t *testing.T) {
	dir := t.TempDir()
	ctx, err := core.New(core.Info{EventLib: "poll", Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	listen := func(name string) (*core.Listener, string) {
		path := filepath.Join(dir, name)
		ln, err := net.Listen("unix", path)
		require.NoError(t, err)
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		l, err := ctx.AdoptListener(ln, "")
		require.NoError(t, err)
		return l, path
	}
	removed, removedPath := listen("removed")
	kept, keptPath := listen("kept")
	require.NoError(t, kept.SetUnlinkOnClose(false))
	require.NoError(t, removed.Close())
	require.NoError(t, kept.Close())
	require.ErrorIs(t, removed.SetUnlinkOnClose(false), core.ErrClosed, "after Close, which settled it")
	require.NoError(t, ctx.Thread(0).Service(0))
	require.NoFileExists(t, removedPath, "the default: removed on Close")
	require.FileExists(t, keptPath, "SetUnlinkOnClose(false), then Close")

	atDestroy, atDestroyPath := listen("destroy")
	require.NoError(t, atDestroy.SetUnlinkOnClose(false))
	tcp, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	require.NoError(t, tcp.SetUnlinkOnClose(true), "a listener without a file ignores it")
	require.NoError(t, ctx.Destroy())
	<-ctx.Done()
	require.FileExists(t, atDestroyPath, "SetUnlinkOnClose(false), then Destroy")
	require.ErrorIs(t, kept.SetUnlinkOnClose(true), core.ErrDestroyed, "after Destroy")
}
