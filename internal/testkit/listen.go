//go:build unix

package testkit

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Spot is where ListenShared listens: an address, and whether the
// listener is stalled. A stalled listener has its one-place accept queue
// filled by a connection nobody accepts: Linux then drops further SYNs,
// so a connect to it stays in progress. The others complete connects
// without accepting them.
type Spot struct {
	Addr    netip.Addr
	Stalled bool
}

// Listener is a listening TCP socket ListenShared made.
type Listener struct{ FD, Port int }

// ListenShared listens on every spot at one port, never accepting; the
// listeners (and stalled ones' fillers) close with the test. The port is
// whatever the kernel picks free on the first spot's address; if a socket
// holds it on another (one of an earlier test's connections there, in
// TIME_WAIT say), it picks again.
func ListenShared(t testing.TB, spots ...Spot) []Listener {
	t.Helper()
	for range 100 {
		if ls, ok := listenShared(t, spots); ok {
			return ls
		}
	}
	t.Fatalf("no port free on all of %v in 100 picks", spots)
	return nil
}

// listenShared is one pick of ListenShared: false if a listener after the
// first found the port taken. What it opened closes with the test if it
// succeeds, at once otherwise.
func listenShared(t testing.TB, spots []Spot) (ls []Listener, ok bool) {
	t.Helper()
	var closers []func()
	defer func() {
		if ok {
			for _, c := range closers {
				t.Cleanup(c)
			}
			return
		}
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	port := 0
	for i, s := range spots {
		family, sa := unix.AF_INET, unix.Sockaddr(&unix.SockaddrInet4{Addr: s.Addr.As4(), Port: port})
		if s.Addr.Is6() {
			family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: s.Addr.As16(), Port: port}
		}
		fd, err := unix.Socket(family, unix.SOCK_STREAM, 0)
		require.NoError(t, err)
		unix.CloseOnExec(fd)
		closers = append(closers, func() { unix.Close(fd) })
		err = unix.Bind(fd, sa)
		if i > 0 && errors.Is(err, unix.EADDRINUSE) {
			return nil, false
		}
		require.NoError(t, err, "listening on %v port %d", s.Addr, port)
		backlog := 16
		if s.Stalled {
			backlog = 0 // a queue of one
		}
		require.NoError(t, unix.Listen(fd, backlog))
		got, err := unix.Getsockname(fd)
		require.NoError(t, err)
		switch got := got.(type) {
		case *unix.SockaddrInet4:
			port = got.Port
		case *unix.SockaddrInet6:
			port = got.Port
		}
		if s.Stalled {
			filler, err := net.Dial("tcp", netip.AddrPortFrom(s.Addr, uint16(port)).String())
			require.NoError(t, err)
			closers = append(closers, func() { filler.Close() })
		}
		ls = append(ls, Listener{FD: fd, Port: port})
	}
	return ls, true
}
