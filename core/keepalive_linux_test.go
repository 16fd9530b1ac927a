package core_test

import (
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestKeepalive(t *testing.T) {
	info := core.Info{Keepalive: core.Keepalive{Idle: 7 * time.Second, Interval: 3 * time.Second, Probes: 4}}
	idle := acceptedSockopt(t, info, func(fd int) (int, error) {
		on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		if err != nil {
			return 0, err
		}
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		return on * v, err
	})
	require.Equal(t, 7, idle)
}

// Keepalive takes whole seconds, so a shorter Idle or Interval rounds up to
// one: it used to truncate to zero, which keeps the system's value (two
// hours for Idle on Linux) where the application asked for less than a
// second.
func TestKeepaliveSubSecond(t *testing.T) {
	info := core.Info{Keepalive: core.Keepalive{Idle: 500 * time.Millisecond, Interval: 1500 * time.Millisecond}}
	got := acceptedSockopt(t, info, func(fd int) (int, error) {
		idle, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		if err != nil {
			return 0, err
		}
		intvl, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		return idle*100 + intvl, err
	})
	require.Equal(t, 1*100+2, got, "TCP_KEEPIDLE*100 + TCP_KEEPINTVL")
}
