//go:build linux

package conformance

import "golang.org/x/sys/unix"

// tcpTaken returns how many bytes of its stream the owner of a TCP socket
// has read: what the kernel received (tcpi_bytes_received, Linux 4.1 on)
// less what it still holds (SIOCINQ). Bytes that arrive between the two
// questions would make it short, so it asks until the first answer holds
// still around the second. ok is false where the socket cannot tell. Only
// for a stream whose peer did not end it: a FIN counts in both figures.
func tcpTaken(fd int) (n int64, ok bool) {
	for range 100 {
		before, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return 0, false
		}
		inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
		if err != nil {
			return 0, false
		}
		after, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return 0, false
		}
		if before.Bytes_received == after.Bytes_received {
			return int64(after.Bytes_received) - int64(inq), true
		}
	}
	return 0, false
}
