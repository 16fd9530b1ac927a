//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	_ "github.com/plugloop/plugloop/evlib_epoll"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/plugloop/plugloop/internal/sys"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A peer that sent its request and closed ends in an orderly way, even
// when the reply, which it no longer reads, provokes a reset: RAW_CLOSE
// says io.EOF on netpoll as on epoll, where the kernel's own read says
// end of stream.
func TestEOFAfterReplyToClosedPeer(t *testing.T) {
	for _, lib := range []string{"epoll", evlib_netpoll.Name} {
		t.Run(lib, func(t *testing.T) {
			closed := make(chan error, 4) // the listener's RAW_CLOSE too, at Destroy
			_, addr := running(t, lib, func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawRX:
					// Reply only once the peer's FIN is in: the reply then
					// meets a closed socket, which answers with a reset.
					for range 10000 {
						if ti, err := unix.GetsockoptTCPInfo(ev.Conn.FD(), unix.IPPROTO_TCP, unix.TCP_INFO); err != nil || ti.State == sys.TCPCloseWait {
							break
						}
						time.Sleep(time.Millisecond)
					}
					return ev.Conn.CallbackOnWritable()
				case core.ReasonRawWriteable:
					_, err := ev.Conn.Write([]byte("reply"))
					return err
				case core.ReasonRawClose:
					closed <- ev.Err
				}
				return nil
			})
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			_, err = c.Write([]byte("hello"))
			require.NoError(t, err)
			require.NoError(t, c.Close())
			select {
			case err := <-closed:
				// On netpoll the socket may say CLOSE with no error pending
				// (netpoll's read took the reset's EPIPE): the sequence
				// space received, which counts the peer's FIN, tells.
				require.ErrorIs(t, err, io.EOF)
			case <-time.After(10 * time.Second):
				t.Fatal("no RAW_CLOSE")
			}
		})
	}
}

// A stream whose write blocked holds a second dup (the helpers') only
// while it waits: once writable again, the socket has the core's fd and
// netpoll's dup, as DupsPerFD says.
func TestBlockedWriteReleasesDup(t *testing.T) {
	noLeaks(t)
	big := make([]byte, 8<<20)
	var conn *core.Conn
	ctx, addr := running(t, evlib_netpoll.Name, func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			conn = ev.Conn
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			if b := big; b != nil {
				big = nil
				_, err := ev.Conn.Write(b) // far more than the socket takes: it blocks
				return err
			}
		}
		return nil
	})
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.ReadFull(c, make([]byte, 8<<20))
	require.NoError(t, err)
	// The last write may have followed the look-ahead's poll(2) rather
	// than the helper (see Backend.lookAhead): the helper then still waits
	// on its dup, which goes when its own post is drained.
	var n int
	testkit.WaitFor(t, 10*time.Second, "the helper's dup to go", func() bool {
		onLoop(t, ctx, func() { n = sameSocket(t, conn.FD()) })
		return n == 2
	}, func() string { return fmt.Sprintf("%d descriptors on the server's socket", n) })
	require.Equal(t, 2, n, "descriptors on the server's socket: its fd and netpoll's dup")
}

// sameSocket counts this process' descriptors open on fd's socket.
func sameSocket(t *testing.T, fd int) int {
	want, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	require.NoError(t, err)
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == want {
			n++
		}
	}
	return n
}

// A client connection goes to netpoll once it is connected, however fast
// its connect finished: on loopback it is done before the core asks for
// writability, and no helper then reports it.
func TestClientStreamGoesToNetpoll(t *testing.T) {
	got := make(chan string, 1)
	ctx, _ := running(t, evlib_netpoll.Name, func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			_, err := ev.Conn.Write([]byte("hi"))
			return err
		case core.ReasonRawRX:
			got <- string(ev.Data)
		}
		return nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	before := evlib_netpoll.Attaches()
	onLoop(t, ctx, func() {
		_, err := ctx.Connect("tcp4", ln.Addr().String(), "p")
		require.NoError(t, err)
	})
	srv, err := ln.Accept()
	require.NoError(t, err)
	defer srv.Close()
	buf := make([]byte, 2)
	_, err = io.ReadFull(srv, buf)
	require.NoError(t, err)
	_, err = srv.Write([]byte("yo"))
	require.NoError(t, err)
	require.Equal(t, "yo", <-got)
	require.Equal(t, before+1, evlib_netpoll.Attaches(), "the client stream was not given to netpoll")
}

// running is a context with one protocol, "p", on lib, listening on
// addr, serviced by Run until the test ends.
func running(t *testing.T, lib string, cb core.Callback) (ctx *core.Context, addr string) {
	ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: cb}}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "p")
	require.NoError(t, err)
	runDone := make(chan error, 1)
	go func() { runDone <- ctx.Run(context.Background()) }()
	t.Cleanup(func() { ctx.Destroy(); <-runDone })
	return ctx, ln.Addr().String()
}
