//go:build linux || freebsd || netbsd || openbsd || dragonfly

package selectbackend

import "golang.org/x/sys/unix"

// wakePipe opens the wake pipe, both ends non-blocking and close-on-exec
// from the start (pipe2(2)).
func wakePipe(p *[2]int) error {
	return unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC)
}
