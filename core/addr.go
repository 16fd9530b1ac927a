//go:build unix

package core

import (
	"net"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// LocalAddr returns the address the connection's socket is bound to, typed
// as the standard library types it: *net.TCPAddr, *net.UDPAddr or
// *net.UnixAddr. It returns nil for a descriptor that is not a socket (a
// pipe, a tty) and once the connection's descriptor was closed (see FD).
// Each call asks the kernel (getsockname).
func (c *Conn) LocalAddr() net.Addr { return c.sockAddr(unix.Getsockname) }

// RemoteAddr returns the peer's address, typed as LocalAddr's, or nil if
// the socket has no peer (an unconnected UDP socket, a connection the peer
// already reset), is not a socket, or was closed (see FD). Each call asks
// the kernel (getpeername).
func (c *Conn) RemoteAddr() net.Addr { return c.sockAddr(unix.Getpeername) }

// sockAddr asks the kernel for an address of c's socket with get.
func (c *Conn) sockAddr(get func(fd int) (unix.Sockaddr, error)) net.Addr {
	fd := c.FD()
	if fd < 0 {
		return nil
	}
	sa, err := get(fd)
	if err != nil {
		return nil
	}
	return c.netAddr(sa)
}

// netAddr converts a socket address of c's socket to the net.Addr the
// standard library's connection of the same kind would return.
func (c *Conn) netAddr(sa unix.Sockaddr) net.Addr {
	datagram := c.kind == evlib.KindDatagram
	var (
		ip   net.IP
		port int
		zone string
	)
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		ip, port = append(net.IP(nil), a.Addr[:]...), a.Port
	case *unix.SockaddrInet6:
		ip, port = append(net.IP(nil), a.Addr[:]...), a.Port
		if a.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
	case *unix.SockaddrUnix:
		if datagram {
			return &net.UnixAddr{Name: a.Name, Net: "unixgram"}
		}
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	default:
		return nil
	}
	if datagram {
		return &net.UDPAddr{IP: ip, Port: port, Zone: zone}
	}
	return &net.TCPAddr{IP: ip, Port: port, Zone: zone}
}
