//go:build unix

package sys

import (
	"time"

	"golang.org/x/sys/unix"
)

// SetKeepalive turns TCP keepalive on for fd and, where the system allows
// it per socket, sets the idle time before the first probe, the interval
// between probes and how many unanswered probes drop the connection (zero
// values keep the system's defaults). Where it does not (OpenBSD), the
// system-wide settings apply, as lws documents for the BSDs.
func SetKeepalive(fd int, idle, interval time.Duration, probes int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1); err != nil {
		return err
	}
	return keepaliveParams(fd, seconds(idle), seconds(interval), probes)
}

// seconds is d in whole seconds, rounded up: the socket options count
// seconds, and a positive d truncated to 0 would keep the system's value
// (two hours for the idle time on Linux) instead of the shortest one.
func seconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	s := int(d / time.Second)
	if d%time.Second != 0 {
		s++
	}
	return s
}
