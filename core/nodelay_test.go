//go:build unix

package core_test

import (
	"net"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// acceptedSockopt accepts one loopback TCP connection on a context made
// from info (its Protocols replaced) and returns what get read from the
// connection's fd at RAW_ADOPT.
func acceptedSockopt(t *testing.T, info core.Info, get func(fd int) (int, error)) int {
	t.Helper()
	got := make(chan int, 1)
	info.Protocols = []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawAdopt {
			v, err := get(ev.Conn.FD())
			require.NoError(t, err)
			got <- v
		}
		return nil
	}}}
	ctx, err := core.New(info)
	require.NoError(t, err)
	defer ctx.Destroy()
	dialListener(t, ctx)
	serviceUntil(t, ctx, func() bool { return len(got) > 0 })
	return <-got
}

// Accepted TCP connections have Nagle off, as with Go's net and gnet: the
// core writes once per WRITEABLE, so Nagle could only delay a reply. The
// first connection, which tells the core whether the system copies the
// listener's setting, and those after it.
func TestAcceptedTCPHasNoDelay(t *testing.T) {
	var got []int // loop only
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawAdopt {
			v, err := unix.GetsockoptInt(ev.Conn.FD(), unix.IPPROTO_TCP, unix.TCP_NODELAY)
			require.NoError(t, err)
			got = append(got, v)
		}
		return nil
	}}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "p")
	require.NoError(t, err)
	for i := range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		serviceUntil(t, ctx, func() bool { return len(got) > i })
	}
	require.Equal(t, []int{1, 1, 1}, got)
}
