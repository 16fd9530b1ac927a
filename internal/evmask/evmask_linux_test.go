package evmask

import (
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

func TestFromEpoll(t *testing.T) {
	for _, tc := range []struct {
		m    uint32
		want evlib.Events
	}{
		{unix.EPOLLIN, evlib.Readable},
		{unix.EPOLLRDHUP, evlib.Readable},
		{unix.EPOLLPRI, evlib.Readable},
		{unix.EPOLLOUT, evlib.Writable},
		{unix.EPOLLHUP | unix.EPOLLERR, evlib.Hangup | evlib.Error},
		{EpollInterest(evlib.Readable | evlib.Writable), evlib.Readable | evlib.Writable},
	} {
		if got := FromEpoll(tc.m); got != tc.want {
			t.Errorf("FromEpoll(%#x) = %v, want %v", tc.m, got, tc.want)
		}
	}
}
