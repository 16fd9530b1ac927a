package core_test

import (
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestKeepalive(t *testing.T) {
	idle := make(chan int, 1)
	ctx, err := core.New(core.Info{
		Keepalive: core.Keepalive{Idle: 7 * time.Second, Interval: 3 * time.Second, Probes: 4},
		Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonRawAdopt {
				on, _ := unix.GetsockoptInt(ev.Conn.FD(), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
				v, _ := unix.GetsockoptInt(ev.Conn.FD(), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
				idle <- on * v
			}
			return nil
		}}},
	})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	serviceUntil(t, ctx, func() bool { return len(idle) > 0 })
	require.Equal(t, 7, <-idle)
}
