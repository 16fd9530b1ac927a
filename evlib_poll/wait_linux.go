package evlib_poll

import (
	"time"

	"golang.org/x/sys/unix"
)

// pollWait is ppoll(2) with the timeout to the nanosecond (< 0: no limit),
// so a timer due in 300 µs is waited for 300 µs, not a whole millisecond.
func pollWait(fds []unix.PollFd, timeout time.Duration) (int, error) {
	if timeout < 0 {
		return unix.Ppoll(fds, nil, nil)
	}
	ts := unix.NsecToTimespec(int64(timeout))
	return unix.Ppoll(fds, &ts, nil)
}
