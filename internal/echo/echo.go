//go:build unix

// Package echo is plugloop's echo protocol, written the libwebsockets way:
// RAW_RX appends the received bytes to a per-connection buffer and asks for
// a WRITEABLE callback; RAW_WRITEABLE writes the whole buffer once. When a
// peer sends faster than it reads, the buffer is capped: past the limit the
// connection's rx is paused (rx flow control) and resumed once everything it
// was sent has left the process, so memory per connection stays bounded.
//
// It is the single implementation behind examples/echo and the echo servers
// of the bench, so the two always measure and show the same code.
package echo

import (
	"github.com/plugloop/plugloop/core"
)

// DefaultMaxBuffered is the per-connection limit of bytes received but not
// yet written at which rx is paused.
const DefaultMaxBuffered = 64 << 10

// Option configures the protocol Protocol returns.
type Option func(*config)

type config struct {
	maxBuffered int
}

// MaxBuffered sets how many bytes a connection may hold, received but not
// yet echoed, before its rx is paused (default DefaultMaxBuffered). n <= 0
// means the default.
func MaxBuffered(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxBuffered = n
		}
	}
}

// session is the per-connection state (lws' per-session data).
type session struct {
	buf    []byte // received, not yet handed to Conn.Write
	paused bool   // we paused rx because buf grew past the limit
}

// Protocol returns an echo protocol named name, ready for core.Info.Protocols
// or as the protocol of a listener. Every connection bound to it gets back
// exactly the bytes it sent, in order.
func Protocol(name string, opts ...Option) core.Protocol {
	cfg := config{maxBuffered: DefaultMaxBuffered}
	for _, o := range opts {
		o(&cfg)
	}
	return core.Protocol{
		Name:     name,
		Callback: func(ev core.Event) error { return cfg.callback(ev) },
	}
}

func (cfg *config) callback(ev core.Event) error {
	switch ev.Reason {
	case core.ReasonRawAdopt:
		ev.Conn.SetUser(&session{})

	case core.ReasonRawRX:
		s, ok := ev.Conn.User().(*session)
		if !ok {
			return nil
		}
		s.buf = append(s.buf, ev.Data...)
		if len(s.buf) >= cfg.maxBuffered && !s.paused {
			s.paused = true
			if err := ev.Conn.RxFlowControl(false); err != nil {
				return err
			}
		}
		return ev.Conn.CallbackOnWritable()

	case core.ReasonRawWriteable:
		s, ok := ev.Conn.User().(*session)
		if !ok {
			return nil
		}
		if len(s.buf) > 0 {
			// Write accepts all of it; what the kernel does not take now
			// the core sends before our next WRITEABLE.
			_, err := ev.Conn.Write(s.buf)
			if err != nil {
				return err
			}
			if cap(s.buf) > 4*cfg.maxBuffered {
				s.buf = nil // a burst grew it; do not keep it for good
			} else {
				s.buf = s.buf[:0]
			}
		}
		if s.paused {
			if ev.Conn.Buffered() > 0 {
				// The kernel is still full: wait for the core to flush
				// before reading more.
				return ev.Conn.CallbackOnWritable()
			}
			s.paused = false
			return ev.Conn.RxFlowControl(true)
		}

	case core.ReasonRawClose:
		ev.Conn.SetUser(nil)
	}
	return nil
}
