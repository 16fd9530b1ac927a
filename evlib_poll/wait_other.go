//go:build unix && !linux

package evlib_poll

import (
	"time"

	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// pollWait is poll(2), which counts whole milliseconds: the timeout is
// rounded up, so a timer never fires early.
func pollWait(fds []unix.PollFd, timeout time.Duration) (int, error) {
	return unix.Poll(fds, sys.Msec(timeout))
}
