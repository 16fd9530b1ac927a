package selectbackend

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// wakePipe opens the wake pipe, both ends non-blocking and close-on-exec.
// macOS has no pipe2(2): the descriptors are marked close-on-exec under
// syscall.ForkLock, as package os does it, so that no child started
// meanwhile inherits them.
func wakePipe(p *[2]int) error {
	syscall.ForkLock.RLock()
	err := unix.Pipe(p[:])
	if err == nil {
		unix.CloseOnExec(p[0])
		unix.CloseOnExec(p[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return err
	}
	for _, fd := range p {
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(p[0])
			unix.Close(p[1])
			return err
		}
	}
	return nil
}
