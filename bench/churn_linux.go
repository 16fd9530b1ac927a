//go:build linux

package main

import (
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// churnDialer is churn client i's dialer. The client closes first, so each
// connection leaves a TIME_WAIT on the client's side, holding its port
// toward the server for a while: 32 clients at 50,000 connections a second
// from one address soon find most of its 28,000 ephemeral ports waiting,
// and connect(2)'s search for a free one becomes the clients' largest cost,
// cutting their rate by two thirds from one round to the next. The server
// then sees fewer connections at a time and pays more for each, so figures
// taken a minute apart did not compare. Toward a loopback IPv4 server each
// client therefore connects from an address of its own in 127.0.0.0/8,
// which Linux answers for as a whole, with a port space of its own, and
// leaves the choice of port to connect (IP_BIND_ADDRESS_NO_PORT), which
// checks the whole address pair instead of the local address alone as a
// bind(2) would.
func churnDialer(addr string, i int) net.Dialer {
	d := net.Dialer{Timeout: 5 * time.Second}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() || !ap.Addr().IsLoopback() {
		return d
	}
	d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 1, byte(i/250), byte(i%250+1))}
	d.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}
	return d
}
