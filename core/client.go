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
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// MaxConnectRacers caps the connects one client connection has in flight
// at once while racing addresses (Info.ConnectAttemptDelay), as lws caps
// its parallel sockets at 3: enough to get past a stalled address or two,
// few enough that a host name with many addresses does not spend a
// thread's fds, or a server's backlog, on one connection.
const MaxConnectRacers = 3

// defaultAttemptDelay is RFC 8305's recommended Connection Attempt Delay.
const defaultAttemptDelay = 250 * time.Millisecond

// dialAttempt is one connect in flight: its socket is in the fd table,
// routed to the connection, until it wins or is dropped.
type dialAttempt struct {
	fd       int
	interest evlib.Events
	sa       unix.Sockaddr
}

type dialState struct {
	addrs    []unix.Sockaddr // left to try, in order
	errs     []error         // why each failed attempt failed, in order
	racing   []*dialAttempt  // connects in flight, oldest first
	delay    *Timer          // starts the next attempt if none won by then
	opts     adoptOptions
	reserved bool // room on the thread is held for the next attempt's fd

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
// reason in Event.Err and nothing else. A host name's addresses (see
// Info.Resolver) are raced, RFC 8305 "Happy Eyeballs": the next one is
// tried as soon as an attempt fails, or beside the ones in progress once
// Info.ConnectAttemptDelay passed with none established; the first
// established wins and the others are closed unseen. If all fail,
// Event.Err matches each attempt's error with errors.Is. A bad network or
// address is an error of the call itself. The connection is placed like
// AdoptFD's (see OnThread), counting from the call on, resolution
// included; handed over to another thread, it starts connecting there.
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
	var r Resolver = net.DefaultResolver
	if t.ctx.info.Resolver != nil {
		r = t.ctx.info.Resolver
	}
	go func() {
		// Wall time, not the thread's clock: the lookup is real network
		// traffic on a goroutine of its own, and this bound, like the
		// context's destruction, only frees that goroutine. What the
		// connection sees is bounded by its timeout on the thread's clock
		// (startDial), which may be a backend's fake one.
		ctx, cancel := context.WithTimeout(t.ctx.life, timeout)
		ips, err := lookup(ctx, r, family, host)
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
			if network == "tcp" {
				ips = interleave(ips)
			}
			conn.dial.addrs = sockaddrs(network, ips, port)
			t.dialNext(conn)
		})
	}()
}

// lookup calls an application's resolver, whose panic would otherwise end
// the process on a goroutine nobody can recover on: it fails the lookup.
func lookup(ctx context.Context, r Resolver, network, host string) (ips []netip.Addr, err error) {
	defer func() {
		if p := recover(); p != nil {
			ips, err = nil, fmt.Errorf("plugloop: resolver panicked: %v", p)
		}
	}()
	return r.LookupNetIP(ctx, network, host)
}

// interleave alternates address families, starting with the first
// address's (RFC 8305 §4), and keeps the resolver's order within each: a
// family whose addresses all stall then delays a connection by one attempt
// delay, not by one per address it has.
func interleave(ips []netip.Addr) []netip.Addr {
	if len(ips) < 2 {
		return ips
	}
	v4 := ips[0].Unmap().Is4()
	var first, second []netip.Addr
	for _, ip := range ips {
		if ip.Unmap().Is4() == v4 {
			first = append(first, ip)
		} else {
			second = append(second, ip)
		}
	}
	out := make([]netip.Addr, 0, len(ips))
	for i := 0; i < len(first) || i < len(second); i++ {
		if i < len(first) {
			out = append(out, first[i])
		}
		if i < len(second) {
			out = append(out, second[i])
		}
	}
	return out
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

// attemptError is why the connect to one address failed.
type attemptError struct {
	addr unix.Sockaddr
	err  error
}

func (e *attemptError) Error() string { return sockaddrString(e.addr) + ": " + e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

// attemptErrors is why every attempt of a connection failed, one error per
// address; errors.Is and errors.As look into each.
type attemptErrors []error

func (e attemptErrors) Error() string {
	s := ""
	for i, err := range e {
		if i > 0 {
			s += "; "
		}
		s += err.Error()
	}
	return s
}

func (e attemptErrors) Unwrap() []error { return e }

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrUnix:
		return sa.Name
	}
	return fmt.Sprint(sa)
}

// dialNext starts a non-blocking connect to the next address, unless
// MaxConnectRacers are in flight (one, without racing) or the thread has
// no room for another fd while some are: an attempt that ends makes room
// and calls it again, and so does the attempt delay, looked at again for
// room made by other connections. The socket is watched for writability, which says
// the connect finished either way. With nothing in flight and nothing
// left to try, the connection fails.
func (t *Thread) dialNext(conn *Conn) {
	if conn.state != stateConnecting || conn.closeReq {
		return // given up in a poll-fd callback: the queued close fails it
	}
	d := conn.dial
	delay, most := t.ctx.info.ConnectAttemptDelay, MaxConnectRacers
	switch {
	case delay < 0:
		most = 1
	case delay == 0:
		delay = defaultAttemptDelay
	}
	for len(d.addrs) > 0 && len(d.racing) < most {
		if !d.reserved {
			if !t.reserve() {
				if len(d.racing) > 0 {
					// Another connection's close may make room before
					// an attempt of this one ends: look again a delay on.
					t.armAttemptDelay(conn, delay)
					return
				}
				t.dialFailed(conn, ErrFDLimit)
				return
			}
			d.reserved = true
		}
		sa := d.addrs[0]
		d.addrs = d.addrs[1:]
		fd, err := startConnect(sa)
		if err != nil {
			d.errs = append(d.errs, &attemptError{sa, err})
			continue // with the room held
		}
		// Like every new fd (and lws' client connect): added for reading,
		// then writability asked for, which reports the connect's end.
		d.reserved = false // used, or given back by a failed insert
		if err := t.insertFD(conn, fd, evlib.Readable, true); err != nil {
			unix.Close(fd)
			t.dialFailed(conn, err)
			return
		}
		a := &dialAttempt{fd: fd, interest: evlib.Readable, sa: sa}
		if conn.state != stateConnecting {
			// A guard: ended in the ADD_POLL_FD of this very socket,
			// which ended every attempt it knew of. Nothing does that
			// now: Close there queues (closeReq, below), and insertFD
			// refuses an fd whose ADD_POLL_FD destroyed the context.
			t.dropAttempt(conn, a)
			return
		}
		d.racing = append(d.racing, a)
		conn.fd = d.racing[0].fd
		if conn.closeReq {
			// Given up by the application in the ADD_POLL_FD of this
			// socket: the close it queued drops a with the rest once the
			// step is done.
			return
		}
		err = t.modify(conn, fd, evlib.Readable|evlib.Writable, a.interest)
		if err == nil {
			a.interest = evlib.Readable | evlib.Writable
		}
		if conn.state != stateConnecting || conn.closeReq {
			return // given up in CHANGE_MODE_POLL_FD: likewise
		}
		if err != nil {
			d.errs = append(d.errs, &attemptError{sa, &OpError{Op: "modify interest", Err: err}})
			t.dropAttempt(conn, a)
			continue
		}
		if most > 1 && len(d.addrs) > 0 {
			// From this attempt's start (RFC 8305 §5), so an attempt that
			// failed at once is followed by a whole delay's wait.
			t.armAttemptDelay(conn, delay)
		} else if d.delay != nil {
			t.timers.remove(d.delay) // nothing left to race
		}
		return
	}
	if len(d.racing) > 0 {
		if len(d.addrs) == 0 && d.reserved {
			d.reserved = false
			t.giveBack(true)
		}
		return // the ones in flight may yet win
	}
	var why error
	switch len(d.errs) {
	case 0:
		why = errors.New("no address to connect to")
	case 1:
		why = d.errs[0]
	default:
		why = attemptErrors(d.errs)
	}
	t.dialFailed(conn, &OpError{Op: "connect", Err: why})
}

// armAttemptDelay has conn's next address tried, beside the attempts in
// flight, delay from now.
func (t *Thread) armAttemptDelay(conn *Conn, delay time.Duration) {
	d := conn.dial
	if d.delay == nil {
		d.delay = &Timer{t: t, idx: -1, fn: func() {
			if conn.state == stateConnecting && conn.dial == d {
				t.dialNext(conn)
			}
		}}
	}
	t.timers.remove(d.delay)
	t.timers.schedule(d.delay, deadline(t.clock(), delay))
}

// startConnect opens a socket for sa and starts a non-blocking connect.
func startConnect(sa unix.Sockaddr) (int, error) {
	family := unix.AF_INET
	switch sa.(type) {
	case *unix.SockaddrInet6:
		family = unix.AF_INET6
	case *unix.SockaddrUnix:
		family = unix.AF_UNIX
	}
	fd, err := sys.Socket(family, unix.SOCK_STREAM, 0)
	if err != nil {
		return -1, err
	}
	if family != unix.AF_UNIX {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	// EAGAIN is a failure: a unix listener's backlog is full (or no
	// local port is free); only EINPROGRESS finishes later.
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// onConnect runs when fd, one of a connecting socket's racing connects,
// became writable (or failed). The first to connect becomes the
// connection's fd as it is registered ("promoted", in lws' words); the
// others are dropped.
func (t *Thread) onConnect(conn *Conn, fd int) {
	if conn.closeReq {
		return // given up in a poll-fd callback: the queued close fails it
	}
	d := conn.dial
	i := slices.IndexFunc(d.racing, func(a *dialAttempt) bool { return a.fd == fd })
	if i < 0 {
		return
	}
	a := d.racing[i]
	errno, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && errno != 0 {
		err = unix.Errno(errno)
	}
	if err == nil && !sys.WritableNow(fd) {
		// No error and not writable: still connecting, and the event was
		// another socket's. An application's loop can hand over revents
		// of an fd that closed earlier in its iteration, whose number
		// this socket then got.
		return
	}
	if err != nil {
		d.errs = append(d.errs, &attemptError{a.sa, err})
		t.dropAttempt(conn, a) // (dialNext does nothing if given up in its DEL_POLL_FD)
		t.dialNext(conn)
		return
	}
	for _, b := range slices.Clone(d.racing) {
		if b != a {
			t.dropAttempt(conn, b)
		}
	}
	if conn.state != stateConnecting || conn.closeReq {
		return // given up in a loser's DEL_POLL_FD
	}
	conn.fd = a.fd
	// Back to reading only while still connecting: an application that
	// gives up in this CHANGE_MODE_POLL_FD gets CLIENT_CONNECTION_ERROR
	// once the step is done, with a dropped as the last attempt, and no
	// RAW_ADOPT.
	err = t.modify(conn, a.fd, evlib.Readable, a.interest)
	if err == nil {
		a.interest = evlib.Readable
	}
	if conn.state != stateConnecting || conn.closeReq {
		return
	}
	if err != nil {
		t.dialFailed(conn, &OpError{Op: "modify interest", Err: err})
		return
	}
	if t.dying() {
		// Destroyed in a poll-fd callback of this step: teardown fails
		// it (CLIENT_CONNECTION_ERROR), no RAW_ADOPT after Destroy.
		return
	}
	conn.interest = a.interest
	d.racing = nil
	t.endDial(conn)
	t.established(conn, &d.opts)
}

// dropAttempt unregisters and closes the socket of an attempt that failed
// or lost.
func (t *Thread) dropAttempt(conn *Conn, a *dialAttempt) {
	if d := conn.dial; d != nil {
		d.racing = slices.DeleteFunc(d.racing, func(b *dialAttempt) bool { return b == a })
		conn.fd = -1
		if len(d.racing) > 0 {
			conn.fd = d.racing[0].fd
		}
	}
	t.unwatch(a.fd, conn, a.interest)
	t.conns[a.fd] = nil
	t.count--
	t.giveBack(true)
	t.fdClose = append(t.fdClose, a.fd)
}

// endDial ends what connecting holds but the winning fd: the thread's
// list entry, the timers, a reservation not used.
func (t *Thread) endDial(conn *Conn) {
	d := conn.dial
	t.dialing = slices.DeleteFunc(t.dialing, func(c *Conn) bool { return c == conn })
	if conn.timeout != nil {
		t.timers.remove(conn.timeout)
	}
	if d.delay != nil {
		t.timers.remove(d.delay)
	}
	if d.reserved {
		d.reserved = false
		t.giveBack(true)
	}
	conn.dial = nil
}

// dialFailed ends a client connection that never got established.
func (t *Thread) dialFailed(conn *Conn, why error) {
	if conn.state != stateConnecting {
		return
	}
	conn.state = stateClosed
	for len(conn.dial.racing) > 0 {
		t.dropAttempt(conn, conn.dial.racing[0])
	}
	t.endDial(conn)
	_ = t.callback(Event{Reason: ReasonClientConnectionError, Conn: conn, Err: why})
}
