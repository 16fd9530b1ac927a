//go:build linux

package sys

import "golang.org/x/sys/unix"

// SpliceRelay is true where a relay can move bytes through a pipe inside
// the kernel (splice(2)); elsewhere the core copies through a buffer.
const SpliceRelay = true

// NewRelayPipe makes a non-blocking, close-on-exec pipe for a relay and
// asks for a capacity of size bytes (F_SETPIPE_SZ). The kernel may refuse
// a larger pipe (a user over fs.pipe-user-pages-soft gets a small one), so
// the capacity it really has is returned: the relay never holds more.
func NewRelayPipe(size int) (r, w, capacity int, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return -1, -1, 0, err
	}
	_, _ = unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, size) // a refusal keeps the default
	capacity, err = unix.FcntlInt(uintptr(p[1]), unix.F_GETPIPE_SZ, 0)
	if err != nil || capacity <= 0 {
		capacity = 64 << 10 // Linux's default pipe size
	}
	return p[0], p[1], capacity, nil
}

// SplicedReset reports whether fd, a TCP socket whose write side is open,
// was reset: it is in state CLOSE, which only a reset or a retransmission
// timeout leads to (the peer's FIN leads to CLOSE_WAIT). It is for a stream
// a splice(2) into stopped short: Linux's splice returns the bytes it
// sent when a later part fails, and that failure took the socket's error
// (the reset's ECONNRESET, which its poll then no longer reports), so a
// read that follows says end of stream.
func SplicedReset(fd int) bool {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	return err == nil && ti.State == TCPClose
}

// Splice moves up to n bytes from in to out inside the kernel, one of them
// being a pipe, without blocking (both fds are non-blocking, and
// SPLICE_F_NONBLOCK covers the pipe). Like Read and Write it skips the
// scheduler hand-off, as it cannot block. 0 bytes with a nil error is the
// end of in's stream.
func Splice(in, out, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n),
		unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
