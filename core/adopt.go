//go:build unix

package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// Listener is a listening socket whose connections the core accepts and
// binds to a protocol. A socket that stops listening behind the core's
// back (shut down: accept(2) says EINVAL) is closed with an error logged,
// and Close then says ErrClosed; other unexpected accept errors are logged
// and rest the listener as EMFILE does.
type Listener struct {
	c        *Conn
	addr     net.Addr
	unixPath string      // the socket file of a unix listener ("" for none)
	keepFile bool        // SetUnlinkOnClose(false): Close leaves unixPath
	closing  atomic.Bool // the group was closed; its thread closes this one (see Listener.Close)
	tcp      bool        // accepted connections get TCP_NODELAY
	noDelay  noDelayMode
	resume   *Timer
	reuse    bool        // one of a SO_REUSEPORT group: accepts for its own thread
	siblings []*Listener // the group's listeners on the other threads
	trickle  bool        // the last full accept loop found at most one connection (see Thread.accept)
	singles  uint8       // reports served with one accept(2) since the last full loop
}

// noDelayMode is what a TCP listener knows of its accepted connections'
// TCP_NODELAY.
type noDelayMode uint8

const (
	noDelayUnknown   noDelayMode = iota // nothing accepted yet
	noDelayInherited                    // they have the listener's
	noDelayEach                         // each needs a setsockopt
)

// setNoDelay turns Nagle off on an accepted connection, as Go's net and
// gnet do: the core writes once per WRITEABLE, so Nagle could only delay a
// reply. The listener has TCP_NODELAY, which Linux and the BSDs copy to
// the connections it accepts; the first connection tells whether this
// system does, and only where it does not does every connection pay a
// setsockopt (a system call per connection less where it does).
func (l *Listener) setNoDelay(fd int) {
	switch l.noDelay {
	case noDelayInherited:
		return
	case noDelayUnknown:
		if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err == nil && v != 0 {
			l.noDelay = noDelayInherited
			return
		}
		l.noDelay = noDelayEach
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
}

// Addr returns the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.addr }

// FD returns the listening socket's descriptor, or -1 once it was closed.
func (l *Listener) FD() int { return l.c.FD() }

// SetUnlinkOnClose sets whether closing a unix listener — Close, or the
// context's Destroy — removes its socket file, as net.UnixListener's method
// does. It is on for every listener with a file, from Listen and
// AdoptListener alike; a listener without one (TCP, an abstract "@name")
// ignores it. It is loop-only, like Close, and returns ErrClosed once the
// listener is closed: Close settled the file's fate.
func (l *Listener) SetUnlinkOnClose(unlink bool) error {
	t := l.c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if l.c.state != stateOpen {
		return ErrClosed
	}
	l.keepFile = !unlink
	return nil
}

// Close stops listening. Connections already accepted stay open. It is
// loop-only, like Conn's methods. With Info.ReusePort, the group's sockets
// on other threads close at once where those threads are idle; a thread
// being serviced closes its own in its next pass and accepts nothing once
// it sees the close.
func (l *Listener) Close() error {
	t := l.c.t
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	if l.c.state != stateOpen {
		return ErrClosed
	}
	t.closeConn(l.c, nil)
	for _, sib := range l.siblings {
		st, sc := sib.c.t, sib.c
		if took, err := st.own(); took {
			// Nobody services that thread: close its socket now.
			st.closeConn(sc, nil)
			st.release(took)
			continue
		} else if errors.Is(err, ErrDestroyed) {
			continue
		}
		// Its thread is being serviced, maybe by another goroutine: it
		// accepts nothing from now on (Thread.accept) and closes the
		// socket in its next pass.
		sib.closing.Store(true)
		st.Post(func() { st.closeConn(sc, nil) })
	}
	return nil
}

// Listen opens a listening socket — network "tcp", "tcp4", "tcp6" or
// "unix" — and serves its connections with the named protocol ("" means
// the first). It is loop-only.
func (c *Context) Listen(network, address, protocol string) (*Listener, error) {
	if _, err := c.protocol(protocol); err != nil {
		return nil, err
	}
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("%w: network %q (want tcp, tcp4, tcp6 or unix)", ErrInvalid, network)
	}
	if c.info.ReusePort && len(c.threads) > 1 && network != "unix" {
		return c.listenReusePort(network, address, protocol)
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, badAddr(err)
	}
	l, err := c.AdoptListener(ln, protocol)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return l, nil
}

// listenReusePort opens one SO_REUSEPORT listener per thread on the same
// address, each adopted by (and accepting for) its own thread, so the
// kernel spreads connections. Every thread must be free to adopt: call
// Listen before Run, or from a goroutine while no thread is serviced.
func (c *Context) listenReusePort(network, address, protocol string) (*Listener, error) {
	p, err := c.protocol(protocol)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = sys.SetReusePort(int(fd)) }); err != nil {
			return err
		}
		return serr
	}}
	var group []*Listener
	fail := func(err error) (*Listener, error) {
		for _, l := range group {
			if took, e := l.c.t.own(); e == nil {
				l.c.t.closeConn(l.c, nil)
				l.c.t.release(took)
			}
		}
		return nil, err
	}
	for _, t := range c.threads {
		took, err := t.own()
		if err != nil || (!took && t != c.threads[0]) {
			if err == nil {
				err = ErrWrongGoroutine
			}
			if took {
				t.release(took)
			}
			return fail(fmt.Errorf("%w: a SO_REUSEPORT listener needs every thread free (listen before Run)", err))
		}
		ln, err := lc.Listen(context.Background(), network, address)
		if err != nil {
			t.release(took)
			return fail(badAddr(err))
		}
		address = ln.Addr().String() // the others share the port the first got
		l, err := adoptListener(t, ln, p)
		if err != nil {
			ln.Close()
			t.release(took)
			return fail(err)
		}
		l.reuse = true
		group = append(group, l)
		if took {
			t.release(took)
		}
	}
	group[0].siblings = group[1:]
	return group[0], nil
}

// badAddr wraps ErrInvalid around net's error for a malformed address, as
// Connect answers one, and leaves a system error (EADDRINUSE...) alone.
func badAddr(err error) error {
	if ae := (*net.AddrError)(nil); errors.As(err, &ae) {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

// AdoptListener takes over a net.Listener: the core accepts its connections
// from then on. On success ln is closed (the core keeps a duplicate of its
// socket); on error the caller still owns it. A unix listener's socket
// file is removed when the Listener closes, as net.Listen's listener
// removes it (an abstract "@name" has none), also when ln was told to keep
// it (net.UnixListener.SetUnlinkOnClose(false), net.FileListener): net does
// not let the core see that setting, so the Listener is told again, with
// Listener.SetUnlinkOnClose.
func (c *Context) AdoptListener(ln net.Listener, protocol string) (*Listener, error) {
	p, err := c.protocol(protocol)
	if err != nil {
		return nil, err
	}
	t := c.threads[0]
	took, err := t.own()
	if err != nil {
		return nil, err
	}
	defer t.release(took)
	return adoptListener(t, ln, p)
}

// adoptListener adopts ln on t, which the caller owns.
func adoptListener(t *Thread, ln net.Listener, p *Protocol) (*Listener, error) {
	fd, err := dupOf(ln)
	if err != nil {
		return nil, err
	}
	_, tcp := ln.Addr().(*net.TCPAddr)
	l := &Listener{addr: ln.Addr(), tcp: tcp}
	if tcp {
		// Linux and the BSDs give accepted connections the listener's
		// TCP_NODELAY (see setNoDelay).
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	ul, isUnix := ln.(*net.UnixListener)
	if p := ln.Addr().String(); isUnix && p != "" && p[0] != '@' {
		// An abstract socket ("@name", Linux) has no file, as net knows:
		// removing "@name" would remove some other file.
		l.unixPath = p
	}
	if l.c, err = t.adopt(fd, evlib.KindListener, p, l, new(adoptOptions), false); err != nil {
		// ln is still the caller's, unchanged: closing it removes its
		// socket file as before.
		unix.Close(fd)
		return nil, err
	}
	if isUnix {
		ul.SetUnlinkOnClose(false) // the core's Listener.Close removes it
	}
	ln.Close()
	return l, nil
}

// AdoptConn takes over a connected net.Conn (a *net.TCPConn, *net.UnixConn
// or anything with SyscallConn). On success nc is closed (the core keeps a
// duplicate of its socket); on error the caller still owns it. The
// connection is placed like AdoptFD's.
func (c *Context) AdoptConn(nc net.Conn, protocol string, opts ...AdoptOption) (*Conn, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: nil net.Conn", ErrInvalid)
	}
	if a := nc.LocalAddr(); a != nil {
		switch n := a.Network(); n {
		case "udp", "udp4", "udp6", "ip", "ip4", "ip6", "unixgram", "unixpacket":
			// Read as a stream, an empty datagram would end it.
			return nil, fmt.Errorf("%w: a %s connection is no stream (AdoptPacketConn takes datagram sockets)", ErrInvalid, n)
		}
	}
	return c.adoptCopy(nc, evlib.KindStream, protocol, opts)
}

// adoptCopy adopts a duplicate of the socket behind v (a net.Conn or a
// net.PacketConn) and closes v once the duplicate is the core's.
func (c *Context) adoptCopy(v io.Closer, kind evlib.Kind, protocol string, opts []AdoptOption) (*Conn, error) {
	p, o, err := c.adoptArgs(kind, protocol, opts)
	if err != nil {
		return nil, err
	}
	fd, err := dupOf(v)
	if err != nil {
		return nil, err
	}
	conn, err := c.adoptKind(fd, kind, p, o)
	if err != nil {
		if !errors.Is(err, errAdoptRefused) {
			unix.Close(fd)
		}
		return nil, err
	}
	v.Close()
	return conn, nil
}

// AdoptFD takes over a connected stream socket's descriptor
// (lws_adopt_socket) and makes it non-blocking. On success the core owns fd
// and will close it; on error — a bad or already adopted fd, a regular
// file or directory (ErrNotPollable, as for AdoptFile), the fd limit, a
// bad OnThread index, a call from the wrong goroutine — the caller still
// owns it, unless RAW_ADOPT itself refused the connection, which closes it
// like any other close.
//
// With several service threads the connection goes to the least-loaded
// one, or to the one OnThread names; from a callback of another thread it
// is handed over to that thread, which adopts it on its own goroutine.
// OnThread documents the rules, which AdoptConn, AdoptFile,
// AdoptPacketConn, ListenUDP and Connect share.
func (c *Context) AdoptFD(fd int, protocol string, opts ...AdoptOption) (*Conn, error) {
	p, o, err := c.adoptArgs(evlib.KindStream, protocol, opts)
	if err != nil {
		return nil, err
	}
	if !sys.ValidFD(fd) {
		return nil, fmt.Errorf("%w: fd %d", ErrBadFD, fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: fd %d: %v", ErrBadFD, fd, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		// As AdoptFile: poll would call it readable forever and serve
		// the file as a stream, epoll refuses it with its own error.
		return nil, fmt.Errorf("%w (fd %d)", ErrNotPollable, fd)
	case unix.S_IFSOCK:
		// Read as a stream, a datagram socket takes an empty datagram
		// for the end of the stream, and a listener fails its first read.
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err == nil && typ != unix.SOCK_STREAM {
			return nil, fmt.Errorf("%w: fd %d is not a stream socket (AdoptPacketConn takes datagram sockets)", ErrInvalid, fd)
		}
		if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && on != 0 {
			return nil, fmt.Errorf("%w: fd %d is a listening socket (AdoptListener takes listeners)", ErrInvalid, fd)
		}
	}
	return c.adoptKind(fd, evlib.KindStream, p, o)
}

// errAdoptRefused marks an adoption that RAW_ADOPT refused: the core
// already owned the fd and closes it.
var errAdoptRefused = errors.New("plugloop: RAW_ADOPT refused the connection")

// dupOf duplicates the socket behind a net.Listener or net.Conn.
func dupOf(v any) (int, error) {
	sc, ok := v.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%w: %T has no SyscallConn", ErrInvalid, v)
	}
	// A closed net.Conn or net.Listener is a closed descriptor: ErrBadFD,
	// still matching net.ErrClosed.
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("%w: %w", ErrBadFD, err)
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = sys.DupCloexec(int(s)) }); err != nil {
		return -1, fmt.Errorf("%w: %w", ErrBadFD, err)
	}
	if derr != nil {
		return -1, derr
	}
	return fd, nil
}

// CallbackOnWritableAll asks for RAW_WRITEABLE on every connection of the
// named protocol (lws_callback_on_writable_all_protocol), on every service
// thread. Any goroutine may call it: the threads whose code the caller may
// run (its own, from a callback; idle ones) are done before it returns, the
// others on their next pass, through Thread.Post.
func (c *Context) CallbackOnWritableAll(protocol string) error {
	return c.eachConn(protocol, (*Conn).CallbackOnWritable)
}

// RxFlowControlAll stops or resumes rx on every connection of the named
// protocol (lws_rx_flow_allow_all_protocol), on every service thread, as
// CallbackOnWritableAll does.
func (c *Context) RxFlowControlAll(protocol string, enable bool) error {
	return c.eachConn(protocol, func(conn *Conn) error { return conn.RxFlowControl(enable) })
}

// eachConn applies f to the open connections of a protocol, thread by
// thread, each on a goroutine allowed to run that thread's code. f's
// errors for a connection that closed meanwhile are ignored; other errors
// of a thread done in place are returned, those of a posted pass dropped.
func (c *Context) eachConn(protocol string, f func(*Conn) error) error {
	p, err := c.protocol(protocol)
	if err != nil {
		return err
	}
	apply := func(t *Thread) error {
		for conn := t.connHead; conn != nil; {
			next := conn.next
			if conn.proto == p && conn.state == stateOpen {
				if err := f(conn); err != nil && !errors.Is(err, ErrClosed) {
					return err
				}
			}
			conn = next
		}
		return nil
	}
	var first error
	home, unsure := c.callerThreadExact()
	for _, t := range c.threads {
		took, post, err := c.routeFrom(home, unsure, t)
		switch {
		case errors.Is(err, ErrWrongGoroutine):
			post = true // another goroutine services t: let it
		case err != nil:
			return err
		}
		if post {
			if err := t.Post(func() { apply(t) }); err != nil {
				return err
			}
			continue
		}
		err = apply(t)
		t.release(took)
		if first == nil {
			first = err
		}
	}
	return first
}
