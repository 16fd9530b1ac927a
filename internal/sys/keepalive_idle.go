//go:build linux || freebsd || netbsd || dragonfly || darwin

package sys

import "golang.org/x/sys/unix"

func keepaliveParams(fd, idle, interval, probes int) error {
	for _, o := range []struct{ opt, v int }{{keepIdle, idle}, {unix.TCP_KEEPINTVL, interval}, {unix.TCP_KEEPCNT, probes}} {
		if o.v > 0 {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, o.opt, o.v); err != nil {
				return err
			}
		}
	}
	return nil
}
