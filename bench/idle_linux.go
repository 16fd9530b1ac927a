//go:build linux

package main

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// idleConnect opens n blocking connections to addr outside Go's poller,
// sends one byte on each and reads its echo, and returns their fds (also
// on error, for the caller to close).
func idleConnect(ctx context.Context, addr string, n int) ([]int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fds := make([]int, 0, n)
	for range n {
		if err := ctx.Err(); err != nil {
			return fds, err
		}
		fd, err := dialRaw(ap)
		if err != nil {
			return fds, err
		}
		fds = append(fds, fd)
		tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	}
	one := []byte{'x'}
	for _, fd := range fds {
		if _, err := unix.Write(fd, one); err != nil {
			return fds, err
		}
	}
	var b [1]byte
	for i, fd := range fds {
		k, err := unix.Read(fd, b[:])
		if errors.Is(err, unix.EAGAIN) {
			return fds, &heldShort{echoed: i}
		}
		if err != nil {
			return fds, err
		}
		if k != 1 || b[0] != 'x' {
			return fds, errors.New("echo returned a different byte")
		}
	}
	return fds, nil
}
