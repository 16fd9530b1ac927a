//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package selectbackend

import (
	"slices"
	"testing"

	"github.com/plugloop/plugloop/evlib"
)

// fd_set's words are int32 on macOS, uint32 on NetBSD and OpenBSD, int64
// on Linux and uint64 on FreeBSD and DragonFly: each and highest read
// every kind alike, sign bits included (fds 31, 63 and 127 here), though
// only Linux's runs here.
func TestWords(t *testing.T) {
	testWords[int32](t)
	testWords[uint32](t)
	testWords[int64](t)
	testWords[uint64](t)
}

func testWords[W word](t *testing.T) {
	t.Helper()
	n, _ := width([]W{0})
	set := func(s []W, fds ...int) []W {
		for _, fd := range fds {
			s[fd/n] |= W(1) << (fd % n)
		}
		return s
	}
	r := set(make([]W, 128/n), 0, 31, 64)
	w := set(make([]W, 128/n), 0, 63, 127)
	var fds []int
	var evs []evlib.Events
	each(r, w, 128, func(fd int, ev evlib.Events) { fds = append(fds, fd); evs = append(evs, ev) })
	rd, wr := evlib.Readable, evlib.Writable
	if want := []int{0, 31, 63, 64, 127}; !slices.Equal(fds, want) {
		t.Errorf("%T: each reported fds %v, want %v", r[0], fds, want)
	}
	if want := []evlib.Events{rd | wr, rd, wr, rd, wr}; !slices.Equal(evs, want) {
		t.Errorf("%T: each reported %v, want %v", r[0], evs, want)
	}
	all := set(make([]W, 128/n), 0, 31, 32, 63, 64, 127)
	for _, c := range []struct{ limit, want int }{{128, 127}, {127, 64}, {64, 63}, {63, 32}, {32, 31}, {31, 0}, {0, -1}} {
		if got := highest(all, c.limit); got != c.want {
			t.Errorf("%T: highest below %d = %d, want %d", all[0], c.limit, got, c.want)
		}
	}
}
