//go:build unix

package core

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// datagramBatch bounds the datagrams read per readiness report, so one busy
// socket cannot starve the others.
const datagramBatch = 16

// ListenUDP creates a UDP socket — network "udp", "udp4" or "udp6" — bound
// to address; "" means ":0", every local address and a port the kernel
// picks, as a socket that only sends wants (network "udp" is then
// dual-stack where the host has IPv6, and IPv4 where it has not). Each
// datagram arrives in its own RAW_RX with Event.From set; WriteTo sends.
// The socket is placed like AdoptFD's (see OnThread); on error it is
// closed.
func (c *Context) ListenUDP(network, address, protocol string, opts ...AdoptOption) (*Conn, error) {
	p, o, err := c.adoptArgs(evlib.KindDatagram, protocol, opts)
	if err != nil {
		return nil, err
	}
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, fmt.Errorf("%w: network %q (want udp, udp4 or udp6)", ErrInvalid, network)
	}
	if address == "" {
		// The standard library picks the family the host has and, for
		// "udp", clears IPV6_V6ONLY, which the BSDs set by default: a
		// plain socket(AF_INET6) would need IPv6 and could not reach IPv4
		// peers there.
		address = ":0"
	}
	pc, err := net.ListenPacket(network, address)
	if err != nil {
		return nil, badAddr(err)
	}
	fd, err := dupOf(pc)
	pc.Close()
	if err != nil {
		return nil, err
	}
	conn, err := c.adoptKind(fd, evlib.KindDatagram, p, o)
	if err != nil && !errors.Is(err, errAdoptRefused) {
		unix.Close(fd)
	}
	return conn, err
}

// AdoptPacketConn takes over a UDP net.PacketConn (or any with
// SyscallConn). On success pc is closed (the core keeps a duplicate of its
// socket); on error the caller still owns it. It is placed like AdoptFD's.
func (c *Context) AdoptPacketConn(pc net.PacketConn, protocol string, opts ...AdoptOption) (*Conn, error) {
	return c.adoptCopy(pc, evlib.KindDatagram, protocol, opts)
}

func (t *Thread) onDatagramReadable(c *Conn) {
	if c.rxPaused {
		if c.interest&evlib.Readable != 0 {
			t.setInterest(c, c.interest&^evlib.Readable)
		}
		return
	}
	if t.rxBuf == nil {
		t.rxBuf = make([]byte, rxBufSize)
	}
	for range datagramBatch {
		t.ctr.Reads.Add(1)
		n, sa, err := unix.Recvfrom(c.fd, t.rxBuf, unix.MSG_DONTWAIT)
		if err != nil {
			// Would block, or an ICMP error for an earlier send (which UDP
			// reports on a later call): neither ends the socket.
			return
		}
		t.touch(c)
		if err := t.callback(Event{Reason: ReasonRawRX, Conn: c, Data: t.rxBuf[:n], From: addrPort(sa)}); err != nil {
			t.closeConn(c, err)
			return
		}
		if c.state != stateOpen || c.rxPaused || t.dying() {
			return
		}
	}
}

// WriteTo sends one datagram to addr. Like Write, it is allowed once per
// RAW_WRITEABLE of this connection. A datagram goes out whole or not at all:
// when the kernel cannot take it now, WriteTo returns an error wrapping
// EAGAIN and nothing was sent — the core never drops or splits it silently
// — and the caller asks for WRITEABLE again. An invalid addr (the zero
// netip.AddrPort) is an error wrapping ErrInvalid that uses up nothing: the
// callback may still send; so is a connection that is no datagram socket.
func (c *Conn) WriteTo(p []byte, addr netip.AddrPort) (int, error) {
	t := c.t
	took, err := t.own()
	if err != nil {
		return 0, err
	}
	defer t.release(took)
	if err := c.writeAllowed(); err != nil {
		return 0, err
	}
	if c.kind != evlib.KindDatagram {
		return 0, fmt.Errorf("%w: WriteTo needs a datagram socket", ErrInvalid)
	}
	if c.family == 0 {
		sa, err := unix.Getsockname(c.fd)
		if err != nil {
			return 0, &OpError{Op: "getsockname", Err: err}
		}
		c.family = unix.AF_INET
		if _, ok := sa.(*unix.SockaddrInet6); ok {
			c.family = unix.AF_INET6
		}
	}
	sa, err := sockaddr(addr, c.family)
	if err != nil {
		return 0, err // nothing tried: the callback may still send
	}
	c.wrote = true
	t.ctr.Writes.Add(1)
	if err := unix.Sendto(c.fd, p, unix.MSG_DONTWAIT, sa); err != nil {
		if wouldBlock(err) {
			// The next CallbackOnWritable waits for the kernel's room
			// instead of being granted at once into EAGAIN again.
			c.writeBlocked = true
		}
		return 0, &OpError{Op: "sendto", Err: err}
	}
	t.touch(c)
	return len(p), nil
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// sockaddr is ap as a socket of family sends to it: an IPv4 address from
// an IPv6 socket (network "udp" opens a dual-stack one) in its IPv4-mapped
// form, which Linux and the BSDs all take, where only Linux takes a
// sockaddr_in there; an IPv4-mapped one from an IPv4 socket unmapped.
func sockaddr(ap netip.AddrPort, family int) (unix.Sockaddr, error) {
	if !ap.IsValid() {
		return nil, fmt.Errorf("%w: address %v", ErrInvalid, ap)
	}
	a := ap.Addr()
	if family != unix.AF_INET6 {
		a = a.Unmap()
	}
	if a.Is4() && family != unix.AF_INET6 {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(ap.Port())}, nil
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: int(ap.Port())}, nil
}
