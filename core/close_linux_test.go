//go:build linux

package core_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A request and its end of stream arriving together (a client that sends
// and shuts its write side down, "nc -N"), with GracefulClose and Close in
// a RAW_RX of input the core kept while rx was paused, delivered when the
// fd was reported readable: the read after that RAW_RX finds the end the
// close waits for, and the connection closes there. It waited for an end
// it had already read, until CloseTimeout.
func TestGracefulCloseInRXWithEndBehind(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			closed := make(chan error, 1)
			paused := false
			ctx, err := core.New(core.Info{EventLib: lib, GracefulClose: true, CloseTimeout: time.Hour,
				Protocols: []core.Protocol{{Name: "p", RxChunk: 4, Callback: func(ev core.Event) error {
					switch ev.Reason {
					case core.ReasonRawRX:
						if !paused {
							// "requ": keep "est", resume from the loop.
							paused = true
							if err := ev.Conn.RxFlowControl(false); err != nil {
								return err
							}
							return ev.Conn.SetTimer(0)
						}
						return ev.Conn.Close()
					case core.ReasonTimer:
						return ev.Conn.RxFlowControl(true)
					case core.ReasonRawClose:
						closed <- ev.Err
					}
					return nil
				}}}})
			require.NoError(t, err)
			srv, cli := testkit.TCPPair(t)
			_, err = cli.Write([]byte("request"))
			require.NoError(t, err)
			require.NoError(t, cli.(*net.TCPConn).CloseWrite())
			waitPeerEnded(t, srv) // request and end in the socket before the core's first read
			_, err = ctx.AdoptConn(srv, "p")
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()
			select {
			case err := <-closed:
				require.NoError(t, err, "RAW_CLOSE after Close")
			case <-time.After(10 * time.Second):
				t.Fatal("no RAW_CLOSE: the close still waits for the peer's end it read")
			}
			b, err := io.ReadAll(cli)
			require.NoError(t, err)
			require.Empty(t, b)
			require.NoError(t, ctx.Destroy())
			<-ctx.Done()
			require.NoError(t, <-done)
		})
	}
}

// waitPeerEnded waits until c's peer's FIN, and so everything sent before
// it, has arrived (TCP state CLOSE_WAIT).
func waitPeerEnded(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		var state uint8
		require.NoError(t, rc.Control(func(fd uintptr) {
			if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = ti.State
			}
		}))
		if state == 8 { // TCP_CLOSE_WAIT
			return
		}
		require.True(t, time.Now().Before(deadline), "the peer's FIN did not arrive")
	}
}

// An abstract unix socket ("@name") has no file: closing its listener
// removed a file named "@name" in the working directory.
func TestAbstractUnixListenerRemovesNoFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	name := "@plugloop-test-" + strconv.Itoa(os.Getpid())
	require.NoError(t, os.WriteFile(name, []byte("keep"), 0o600))
	ctx, err := core.New(core.Info{EventLib: "epoll", Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("unix", name, "")
	require.NoError(t, err)
	require.NoError(t, ln.Close())
	require.NoError(t, ctx.Thread(0).Service(0))
	require.FileExists(t, filepath.Join(dir, name))
}
