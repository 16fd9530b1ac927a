//go:build unix

package core

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

type dialState struct {
	addrs    []unix.Sockaddr // left to try, in order
	last     error           // why the previous address failed
	opts     adoptOptions
	reserved bool // room on the thread is held for the first attempt's fd

	// What startDial resolves when addrs is nil, and names in a timeout.
	network, host, address string
	port                   uint16
}

// Connect starts a raw client connection — network "tcp", "tcp4", "tcp6"
// or "unix" — and binds it to protocol. It never blocks the loop: a host
// name is resolved on another goroutine and the result posted back, and the
// connect itself is non-blocking. The returned Conn identifies the
// connection before any callback can fire (lws' pwsi); it reports
// Connecting until then. Once established the protocol gets RAW_ADOPT and
// the connection is like any other; if every address fails or
// Info.ConnectTimeout passes, it gets CLIENT_CONNECTION_ERROR with the
// reason in Event.Err and nothing else. Addresses are tried one after the
// other. A bad network or address is an error of the call itself. The
// connection is placed like AdoptFD's (see OnThread), counting from the
// call on, resolution included; handed over to another thread, it starts
// connecting there.
func (c *Context) Connect(network, address, protocol string, opts ...AdoptOption) (*Conn, error) {
	p, o, err := c.adoptArgs(evlib.KindStream, protocol, opts)
	if err != nil {
		return nil, err
	}
	d := &dialState{opts: *o, network: network, address: address}
	switch network {
	case "unix":
		d.addrs = []unix.Sockaddr{&unix.SockaddrUnix{Name: address}}
	case "tcp", "tcp4", "tcp6":
		host, portStr, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%w: port %q", ErrInvalid, portStr)
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			d.addrs = sockaddrs(network, []netip.Addr{ip}, uint16(port))
		} else {
			d.host, d.port = host, uint16(port)
		}
	default:
		return nil, fmt.Errorf("%w: network %q (want tcp, tcp4, tcp6 or unix)", ErrInvalid, network)
	}
	if c.destroyReq.Load() {
		return nil, ErrDestroyed
	}
	t, err := c.pick(o)
	if err != nil {
		return nil, err
	}
	d.reserved = true
	conn := &Conn{t: t, fd: -1, kind: evlib.KindStream, proto: p, user: o.user, state: stateConnecting, dial: d}
	took, handover, err := c.route(t)
	switch {
	case err != nil:
		t.giveBack(false)
		return nil, err
	case handover:
		if err := t.handoff(conn); err != nil {
			t.giveBack(false)
			return nil, err
		}
		return conn, nil
	}
	defer t.release(took)
	if t.dying() {
		t.giveBack(true)
		return nil, ErrDestroyed
	}
	t.startDial(conn)
	return conn, nil
}

// startDial starts a connection Connect made, on its own thread.
func (t *Thread) startDial(conn *Conn) {
	d := conn.dial
	t.dialing = append(t.dialing, conn)
	conn.setTimeoutErr(t.ctx.info.ConnectTimeout, ErrTimeout)
	conn.timeout.fn = func() { t.dialFailed(conn, fmt.Errorf("%w: connecting to %s", ErrTimeout, d.address)) }
	if d.addrs == nil {
		t.resolve(conn, d.network, d.host, d.port)
		return
	}
	// Not here but in the next pass: a connect that fails at once would
	// deliver CLIENT_CONNECTION_ERROR inside Connect, before the caller has
	// the Conn it identifies. (Refused after destroy: teardown reports it.)
	_ = t.Post(func() {
		if conn.state == stateConnecting {
			t.dialNext(conn)
		}
	})
}

// resolve looks host up on its own goroutine and posts the addresses back.
func (t *Thread) resolve(conn *Conn, network, host string, port uint16) {
	family := map[string]string{"tcp": "ip", "tcp4": "ip4", "tcp6": "ip6"}[network]
	timeout := t.ctx.info.ConnectTimeout
	go func() {
		// Wall time, not the thread's clock: the lookup is real network
		// traffic on a goroutine of its own, and this bound only frees
		// that goroutine. What the connection sees is bounded by its
		// timeout on the thread's clock (startDial), which may be a
		// backend's fake one.
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		ips, err := net.DefaultResolver.LookupNetIP(ctx, family, host)
		cancel()
		// After destroy the post is refused, and teardown reported it.
		_ = t.Post(func() {
			if conn.state != stateConnecting {
				return // timed out or aborted meanwhile
			}
			if err != nil {
				t.dialFailed(conn, fmt.Errorf("plugloop: resolving %s: %w", host, err))
				return
			}
			conn.dial.addrs = sockaddrs(network, ips, port)
			t.dialNext(conn)
		})
	}()
}

func sockaddrs(network string, ips []netip.Addr, port uint16) []unix.Sockaddr {
	var out []unix.Sockaddr
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4() && network != "tcp6":
			out = append(out, &unix.SockaddrInet4{Addr: ip.As4(), Port: int(port)})
		case ip.Is6() && network != "tcp4":
			out = append(out, &unix.SockaddrInet6{Addr: ip.As16(), Port: int(port)})
		}
	}
	if out == nil {
		out = []unix.Sockaddr{} // no usable address: dialNext reports it
	}
	return out
}

// dialNext starts a non-blocking connect to the next address; the socket is
// watched for writability, which says the connect finished either way.
func (t *Thread) dialNext(conn *Conn) {
	d := conn.dial
	for len(d.addrs) > 0 {
		sa := d.addrs[0]
		d.addrs = d.addrs[1:]
		family := unix.AF_INET
		switch sa.(type) {
		case *unix.SockaddrInet6:
			family = unix.AF_INET6
		case *unix.SockaddrUnix:
			family = unix.AF_UNIX
		}
		fd, err := sys.Socket(family, unix.SOCK_STREAM, 0)
		if err != nil {
			d.last = err
			continue
		}
		if family != unix.AF_UNIX {
			unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		}
		// EAGAIN is a failure: a unix listener's backlog is full (or no
		// local port is free); only EINPROGRESS finishes later.
		err = unix.Connect(fd, sa)
		if err != nil && !errors.Is(err, unix.EINPROGRESS) {
			unix.Close(fd)
			d.last = err
			continue
		}
		conn.fd = fd
		// Like every new fd (and lws' client connect): added for reading,
		// then writability asked for, which reports the connect's end.
		reserved := d.reserved
		d.reserved = false // used, or given back by a failed insert
		if err := t.insert(conn, evlib.Readable, reserved); err != nil {
			unix.Close(fd)
			conn.fd = -1
			t.dialFailed(conn, err)
			return
		}
		t.setInterest(conn, evlib.Readable|evlib.Writable)
		return
	}
	why := d.last
	if why == nil {
		why = errors.New("no address to connect to")
	}
	t.dialFailed(conn, &OpError{Op: "connect", Err: why})
}

// onConnect runs when a connecting socket became writable (or failed).
func (t *Thread) onConnect(conn *Conn) {
	errno, err := unix.GetsockoptInt(conn.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && errno != 0 {
		err = unix.Errno(errno)
	}
	if err == nil && !sys.WritableNow(conn.fd) {
		// No error and not writable: still connecting, and the event was
		// another socket's. An application's loop can hand over revents
		// of an fd that closed earlier in its iteration, whose number
		// this socket then got.
		return
	}
	if err != nil {
		conn.dial.last = err
		t.dropDialFD(conn)
		t.dialNext(conn)
		return
	}
	t.dialing = slices.DeleteFunc(t.dialing, func(c *Conn) bool { return c == conn })
	t.timers.remove(conn.timeout)
	o := conn.dial.opts
	conn.dial = nil
	t.setInterest(conn, evlib.Readable)
	t.established(conn, &o)
}

// dropDialFD unregisters and closes the socket of a failed attempt.
func (t *Thread) dropDialFD(conn *Conn) {
	if conn.fd < 0 {
		return
	}
	t.unwatch(conn.fd, conn, conn.interest)
	t.conns[conn.fd] = nil
	t.count--
	t.giveBack(true)
	t.fdClose = append(t.fdClose, conn.fd)
	conn.fd, conn.interest = -1, 0
}

// dialFailed ends a client connection that never got established.
func (t *Thread) dialFailed(conn *Conn, why error) {
	if conn.state != stateConnecting {
		return
	}
	conn.state = stateClosed
	t.dialing = slices.DeleteFunc(t.dialing, func(c *Conn) bool { return c == conn })
	if conn.timeout != nil {
		t.timers.remove(conn.timeout)
	}
	t.dropDialFD(conn)
	if conn.dial.reserved {
		t.giveBack(true)
	}
	conn.dial = nil
	_ = t.callback(Event{Reason: ReasonClientConnectionError, Conn: conn, Err: why})
}
