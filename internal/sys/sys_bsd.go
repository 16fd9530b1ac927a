//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package sys

import "golang.org/x/sys/unix"

const wakeLen = 1

// NewWaker returns a non-blocking pipe.
func NewWaker() (Waker, error) {
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		return Waker{-1, -1}, err
	}
	for _, fd := range p {
		if err := SetNonblock(fd); err != nil {
			unix.Close(p[0])
			unix.Close(p[1])
			return Waker{-1, -1}, err
		}
	}
	return Waker{p[0], p[1]}, nil
}

// Accept accepts one connection as a non-blocking, close-on-exec fd.
func Accept(fd int) (int, error) {
	for {
		nfd, _, err := unix.Accept(fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, err
		}
		if err := SetNonblock(nfd); err != nil {
			unix.Close(nfd)
			return -1, err
		}
		return nfd, nil
	}
}

// Read is read(2).
func Read(fd int, p []byte) (int, error) { return unix.Read(fd, p) }

// Write is write(2).
func Write(fd int, p []byte) (int, error) { return unix.Write(fd, p) }

// FIONREAD is the ioctl that reports how many bytes are ready to read:
// _IOR('f', 127, int) on every BSD and macOS (x/sys does not export it).
const FIONREAD = 0x4004667f
