//go:build unix

package core_test

import (
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Accepted TCP connections have Nagle off, as with Go's net and gnet: the
// core writes once per WRITEABLE, so Nagle could only delay a reply.
func TestAcceptedTCPHasNoDelay(t *testing.T) {
	nodelay := make(chan int, 1)
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawAdopt {
			v, err := unix.GetsockoptInt(ev.Conn.FD(), unix.IPPROTO_TCP, unix.TCP_NODELAY)
			require.NoError(t, err)
			nodelay <- v
		}
		return nil
	}}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	for len(nodelay) == 0 {
		require.NoError(t, ctx.Thread(0).Service(time.Second))
	}
	require.Equal(t, 1, <-nodelay)
}
