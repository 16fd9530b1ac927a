package evlib_netpoll_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	_ "github.com/plugloop/plugloop/evlib_epoll"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A peer that sent its request and closed ends in an orderly way, even
// when the reply, which it no longer reads, provokes a reset: RAW_CLOSE
// says io.EOF on netpoll as on epoll, where the kernel's own read says
// end of stream.
func TestEOFAfterReplyToClosedPeer(t *testing.T) {
	const tcpCloseWait = 8 // TCP_CLOSE_WAIT in linux/tcp_states.h
	for _, lib := range []string{"epoll", evlib_netpoll.Name} {
		t.Run(lib, func(t *testing.T) {
			closed := make(chan error, 1)
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawRX:
					// Reply only once the peer's FIN is in: the reply then
					// meets a closed socket, which answers with a reset.
					for range 10000 {
						if ti, err := unix.GetsockoptTCPInfo(ev.Conn.FD(), unix.IPPROTO_TCP, unix.TCP_INFO); err != nil || ti.State == tcpCloseWait {
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
			}}}})
			require.NoError(t, err)
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "p")
			require.NoError(t, err)
			runDone := make(chan error, 1)
			go func() { runDone <- ctx.Run(context.Background()) }()
			defer func() { ctx.Destroy(); <-runDone }()
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			_, err = c.Write([]byte("hello"))
			require.NoError(t, err)
			require.NoError(t, c.Close())
			select {
			case err := <-closed:
				require.ErrorIs(t, err, io.EOF)
			case <-time.After(10 * time.Second):
				t.Fatal("no RAW_CLOSE")
			}
		})
	}
}
