//go:build unix

package core

import (
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"
)

// ErrNotPollable says the descriptor is a regular file or a directory. Those are
// always ready, so no event loop can watch them (epoll refuses them, poll
// reports them ready forever); read them directly or from a worker
// goroutine. Every backend gives this same answer.
var ErrNotPollable = errors.New("plugloop: regular files and directories are always ready and cannot be watched")

// AdoptOption configures an adoption.
type AdoptOption func(*adoptOptions)

type adoptOptions struct {
	readbuf  []byte
	user     any
	thread   int        // with pinned: OnThread's index
	pinned   bool       // OnThread was given
	peerIP   netip.Addr // counted against Info.MaxConnsPerIP
	accepted bool       // by one of the core's listeners (see Conn.accepted)
}

// WithReadbuf hands over bytes already read from the socket before it was
// adopted (lws_adopt_socket_readbuf): they are delivered to RAW_RX first,
// before anything read from the socket, without waiting for a network
// event. p is copied. It is for stream sockets: AdoptFile, ListenUDP and
// AdoptPacketConn refuse it with ErrInvalid.
func WithReadbuf(p []byte) AdoptOption {
	return func(o *adoptOptions) { o.readbuf = p }
}

// WithUser sets Conn.User before RAW_ADOPT runs.
func WithUser(v any) AdoptOption {
	return func(o *adoptOptions) { o.user = v }
}

// AdoptFile takes over a pipe, FIFO, tty or character device (lws' raw file
// adoption). The protocol gets RAW_ADOPT_FILE, RAW_RX_FILE when the fd is
// readable (the callback reads it), RAW_WRITEABLE_FILE after
// CallbackOnWritable (Conn.Write works there), and RAW_CLOSE_FILE. Regular
// files and directories are refused with ErrNotPollable on every backend.
// Ownership and placement follow AdoptFD: on error the caller keeps fd.
func (c *Context) AdoptFile(fd int, protocol string, opts ...AdoptOption) (*Conn, error) {
	p, o, err := c.adoptArgs(evlib.KindFile, protocol, opts)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if !sys.ValidFD(fd) || unix.Fstat(fd, &st) != nil {
		return nil, fmt.Errorf("%w: fd %d", ErrBadFD, fd)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		return nil, fmt.Errorf("%w (fd %d)", ErrNotPollable, fd)
	}
	if c.backend.Caps&evlib.CapFiles == 0 {
		return nil, fmt.Errorf("%w: the %s backend cannot watch files (no evlib.CapFiles)", ErrInvalid, c.backend.Name)
	}
	return c.adoptKind(fd, evlib.KindFile, p, o)
}

// reason maps a RAW reason to its file counterpart for file connections.
func (c *Conn) reason(r Reason) Reason {
	if c.kind != evlib.KindFile {
		return r
	}
	switch r {
	case ReasonRawAdopt:
		return ReasonRawAdoptFile
	case ReasonRawRX:
		return ReasonRawRXFile
	case ReasonRawWriteable:
		return ReasonRawWriteableFile
	case ReasonRawClose:
		return ReasonRawCloseFile
	}
	return r
}

// onFileReadable tells the protocol a file is readable; the core does not
// read it. A hangup with nothing left to read is end of file: a FIFO whose
// writers are all gone. Only then does it cost an ioctl.
func (t *Thread) onFileReadable(c *Conn, ev evlib.Events) {
	if c.rxPaused {
		switch {
		case ev&(evlib.Hangup|evlib.Error) != 0:
			t.park(c) // reported whatever the interest; resume watches it again
		case c.interest&evlib.Readable != 0:
			t.setInterest(c, c.interest&^evlib.Readable)
		}
		return
	}
	if ev&(evlib.Hangup|evlib.Error) != 0 {
		if n, err := unix.IoctlGetInt(c.fd, sys.FIONREAD); err != nil || n == 0 {
			t.closeConn(c, io.EOF)
			return
		}
	}
	t.touch(c)
	if err := t.callback(Event{Reason: ReasonRawRXFile, Conn: c}); err != nil {
		t.closeConn(c, err)
	}
}
