//go:build unix

package conformance

import "golang.org/x/sys/unix"

// nonblockPipe returns a pipe with both ends non-blocking and
// close-on-exec (unix.Pipe2 is not on every system).
func nonblockPipe(p *[2]int) error {
	if err := unix.Pipe(p[:]); err != nil {
		return err
	}
	for _, fd := range p {
		unix.CloseOnExec(fd)
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(p[0])
			unix.Close(p[1])
			return err
		}
	}
	return nil
}
