//go:build unix

package core_test

import (
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
// core writes once per WRITEABLE, so Nagle could only delay a reply.
func TestAcceptedTCPHasNoDelay(t *testing.T) {
	v := acceptedSockopt(t, core.Info{}, func(fd int) (int, error) {
		return unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
	})
	require.Equal(t, 1, v)
}
