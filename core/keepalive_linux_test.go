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
