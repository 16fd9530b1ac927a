//go:build unix && !freebsd && !dragonfly

package conformance

import "golang.org/x/sys/unix"

func setCur(rl *unix.Rlimit, n int) { rl.Cur = uint64(n) }
