//go:build unix

package evmask

import (
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

func TestPollRoundTrip(t *testing.T) {
	all := []evlib.Events{evlib.Readable, evlib.Writable, evlib.Hangup, evlib.Error}
	for bits := range 1 << len(all) {
		var ev evlib.Events
		for i, e := range all {
			if bits&(1<<i) != 0 {
				ev |= e
			}
		}
		if got := FromPoll(ToPoll(ev)); got != ev {
			t.Errorf("FromPoll(ToPoll(%v)) = %v", ev, got)
		}
		if got := FromPoll(PollInterest(ev)); got != ev&(evlib.Readable|evlib.Writable) {
			t.Errorf("FromPoll(PollInterest(%v)) = %v", ev, got)
		}
	}
	if got := FromPoll(unix.POLLPRI | unix.POLLNVAL); got != evlib.Readable|evlib.Error {
		t.Errorf("FromPoll(POLLPRI|POLLNVAL) = %v", got)
	}
}
