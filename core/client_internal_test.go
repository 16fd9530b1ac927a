//go:build unix

package core

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// RFC 8305 §4: families alternate, starting with the first address's, in
// the resolver's order within each family.
func TestInterleave(t *testing.T) {
	p := netip.MustParseAddr
	for _, tc := range []struct{ in, want []netip.Addr }{
		{nil, nil},
		{[]netip.Addr{p("::1")}, []netip.Addr{p("::1")}},
		{[]netip.Addr{p("::1"), p("::2"), p("::3"), p("10.0.0.1"), p("10.0.0.2")},
			[]netip.Addr{p("::1"), p("10.0.0.1"), p("::2"), p("10.0.0.2"), p("::3")}},
		{[]netip.Addr{p("10.0.0.1"), p("10.0.0.2"), p("::1")},
			[]netip.Addr{p("10.0.0.1"), p("::1"), p("10.0.0.2")}},
		{[]netip.Addr{p("::ffff:10.0.0.1"), p("::1"), p("10.0.0.2")},
			[]netip.Addr{p("::ffff:10.0.0.1"), p("::1"), p("10.0.0.2")}},
	} {
		got := interleave(tc.in)
		if len(got) != len(tc.want) {
			t.Fatalf("interleave(%v) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("interleave(%v) = %v, want %v", tc.in, got, tc.want)
			}
		}
	}
}

// Every attempt's error is found by errors.Is and named with its address.
func TestAttemptErrors(t *testing.T) {
	err := error(&OpError{Op: "connect", Err: attemptErrors{
		&attemptError{&unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 80}, unix.ETIMEDOUT},
		&attemptError{&unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16(), Port: 80}, unix.ECONNREFUSED},
	}})
	for _, want := range []error{unix.ETIMEDOUT, unix.ECONNREFUSED} {
		if !errors.Is(err, want) {
			t.Errorf("errors.Is(%v, %v) = false", err, want)
		}
	}
	if want := "plugloop: connect: 127.0.0.1:80: " + unix.ETIMEDOUT.Error() + "; [::1]:80: " + unix.ECONNREFUSED.Error(); err.Error() != want {
		t.Errorf("%q, want %q", err.Error(), want)
	}
}
