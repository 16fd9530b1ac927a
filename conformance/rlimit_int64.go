//go:build freebsd || dragonfly

package conformance

import "golang.org/x/sys/unix"

func setCur(rl *unix.Rlimit, n int) { rl.Cur = int64(n) } // int64 on FreeBSD and DragonFly
