//go:build linux || freebsd || netbsd || dragonfly

package sys

import "golang.org/x/sys/unix"

const keepIdle = unix.TCP_KEEPIDLE
