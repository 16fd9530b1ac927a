//go:build unix

// Command proxy is a TCP proxy on plugloop's core: every connection accepted
// on -listen gets a client connection of its own to -upstream
// (core.Context.Connect), and the bytes are relayed both ways.
//
//	go run ./examples/echo -addr 127.0.0.1:9000 &
//	go run ./examples/proxy -listen 127.0.0.1:8080 -upstream 127.0.0.1:9000 -evlib epoll
//	nc 127.0.0.1 8080
//
// or in front of examples/httpd, where a request ended by a half-close gets
// its answer through the proxy:
//
//	go run ./examples/httpd -addr 127.0.0.1:9000 &
//	printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' | nc -N 127.0.0.1 8080
//	wrk -c 50 -d 5s http://127.0.0.1:8080/
//
// Once a pair is connected and nothing the proxy holds for a side is
// left, the proxy hands each direction to the core (core.Conn.RelayTo):
// from then on the core moves the bytes itself, with splice(2) through a
// pipe on Linux where it reads its sockets (epoll, poll, gnet, foreign),
// copying through a buffer of its own elsewhere, never holding more than
// one pipe's worth per direction, reading a side only while the other
// side's socket takes what it holds; so TCP pushes back end to end. The
// half-close and error rules below stay the same: a relay ends after the
// last byte of its source with RAW_RX_END, and a side's error resets its
// partner. -no-relay keeps every byte on the path below, which is also
// the path of input that arrives before the upstream is connected, and of
// a direction the core cannot relay (a client whose end of stream was
// delivered, RAW_RX_END, before its upstream connected):
//
//   - Each direction has a pending buffer on its sending side. RAW_RX on one
//     connection appends to the other's buffer and asks for the other's
//     RAW_WRITEABLE (Conn.CallbackOnWritable); RAW_WRITEABLE hands all that
//     is pending to one Conn.Write. Write accepts it all: what the kernel
//     does not take the core keeps (Conn.Buffered) and sends before the next
//     RAW_WRITEABLE. One Write per WRITEABLE is what keeps that bounded: the
//     core holds at most the rest of one Write, the next WRITEABLE means it
//     has all left, and whatever arrives meanwhile waits in the proxy's
//     buffer, where the proxy can count it and act.
//   - The proxy counts what waits for a connection as its pending bytes plus
//     what the core holds. When that reaches -highwater, the connection the
//     bytes come from is paused (Conn.RxFlowControl(false)): the core stops
//     reading it, its socket buffer fills, and TCP pushes back on its peer.
//     It resumes at a WRITEABLE that leaves less than -lowwater waiting.
//     A pause stops RAW_RX before the next one, and one RAW_RX brings at most
//     core.Protocol.RxChunk bytes, so what the proxy and the core hold for
//     one direction of one pair never exceeds -highwater plus one RxChunk,
//     whatever the peers do. The two marks apart keep a pair from pausing
//     and resuming on every read.
//   - Input a client sends before the upstream connection is established
//     waits in the same buffer, under the same bound, and leaves in the
//     upstream's first WRITEABLE.
//   - An upstream that cannot be reached (CLIENT_CONNECTION_ERROR) closes
//     the client. A connection that ends with an error — a reset, a failed
//     write, a timeout — ends its partner at once with Conn.Abort, which
//     drops what was pending for it and resets it (SO_LINGER 0): a peer
//     must not take a broken stream for a complete one, and Conn.Close
//     would send the held output first and end the stream in order.
//   - Half-close propagates both ways. Both protocols set
//     core.Protocol.AllowHalfOpen, so a peer's orderly end of stream (its
//     FIN: shutdown(SHUT_WR), "nc -N") does not close its connection: the
//     core delivers RAW_RX_END after the last RAW_RX, and the proxy passes
//     the end on. What is pending for the other side is sent first, in its
//     next WRITEABLE, then Conn.CloseWrite shuts the other side's write side
//     down once the core has sent what it holds; meanwhile the other
//     direction keeps relaying, for as long as it needs (an answer to a
//     request that ended with a half-close). When both directions have
//     ended, each connection has both ended its input and shut its output,
//     and the core closes both.
//   - A side that neither received nor sent for -idle is closed by the core
//     (core.Info.IdleTimeout, ErrTimeout), which resets its partner as any
//     error does. Half-open connections have no other bound: a peer that
//     ended its stream may wait as long as it likes for the answer.
//
// Both connections of a pair live on one service thread (core.OnThread), as
// each side's callbacks call the other's methods, which are loop-only;
// -threads spreads pairs over several. -evlib takes any backend name;
// PLUGLOOP_EVLIB overrides it. With -evlib foreign, the program's own
// unix.Poll loop (foreign.PollSet) drives plugloop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plugloop/plugloop/core"
	_ "github.com/plugloop/plugloop/evlib_gnet"    // -evlib gnet
	_ "github.com/plugloop/plugloop/evlib_netpoll" // -evlib netpoll (Linux)
	"github.com/plugloop/plugloop/internal/exampleloop"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.evlib, "evlib", "", "event-loop backend (default: the best available)")
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:8080", "listen address HOST:PORT")
	flag.StringVar(&cfg.upstream, "upstream", "127.0.0.1:9000", "upstream address HOST:PORT")
	flag.IntVar(&cfg.highWater, "highwater", 256<<10, "bytes waiting for one side at which the other side's rx pauses")
	flag.IntVar(&cfg.lowWater, "lowwater", 64<<10, "bytes waiting below which a paused side resumes")
	flag.IntVar(&cfg.threads, "threads", 1, "service threads (core.Info.CountThreads); both sides of a pair share one")
	flag.DurationVar(&cfg.connectTimeout, "connect-timeout", 5*time.Second, "upstream connect timeout (core.Info.ConnectTimeout)")
	flag.BoolVar(&cfg.noRelay, "no-relay", false, "relay every byte through RAW_RX and Write instead of the core's relay (core.Conn.RelayTo)")
	flag.DurationVar(&cfg.idle, "idle", 10*time.Minute, "reset a pair when one side neither received nor sent for this long (core.Info.IdleTimeout; 0: never)")
	flag.Parse()

	p, err := start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "proxy: %s -> %s with the %s backend; ^C stops\n", p.addr(), cfg.upstream, p.ctx.EventLib())
	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-sig.Done():
	case <-p.ctx.Done():
	}
	if err := p.close(); err != nil {
		fmt.Fprintln(os.Stderr, "proxy:", err)
		os.Exit(1)
	}
	s := p.stats()
	fmt.Fprintf(os.Stderr, "proxy: stopped; %d connections, %d upstream connect errors, %d+%d rx pauses, peak pending %d/%d bytes\n",
		s.Accepted, s.ConnectErrors, s.Pauses[fromClient], s.Pauses[fromUpstream], s.PeakPending[fromClient], s.PeakPending[fromUpstream])
}

type config struct {
	evlib          string
	listen         string
	upstream       string
	highWater      int // bytes waiting for a side that pause the other's rx
	lowWater       int // bytes waiting below which the other resumes
	threads        int
	connectTimeout time.Duration
	idle           time.Duration // core.Info.IdleTimeout
	noRelay        bool          // never core.Conn.RelayTo: RAW_RX and Write only
}

// rxChunk caps one RAW_RX (core.Protocol.RxChunk), so that what one read
// adds beyond the high-water mark is bounded whatever the backend reads.
const rxChunk = 64 << 10

// The two directions, named by where the bytes come from; they index
// Stats' arrays.
const (
	fromClient   = 0 // client -> upstream
	fromUpstream = 1 // upstream -> client
)

// side is one connection of a pair (its per-session data). Only the pair's
// service thread touches it.
type side struct {
	index int // fromClient for the client's side, fromUpstream for the upstream's
	conn  *core.Conn
	other *side

	out        []byte // received from other, not handed to conn.Write yet
	paused     bool   // this side's rx is paused because other's out is full
	connecting bool   // the upstream is not established yet
	endOut     bool   // other's input ended: shut this side's write side once out is sent
	writeShut  bool   // CloseWrite was called
	closed     bool   // RAW_CLOSE or CLIENT_CONNECTION_ERROR came
	relaying   bool   // the core relays this side's input to other (RelayTo)
}

// waiting is what this side has to send: what the proxy holds for it plus
// what the core holds from its last Write.
func (s *side) waiting() int {
	if s.conn == nil {
		return len(s.out)
	}
	return len(s.out) + s.conn.Buffered()
}

// Stats are counters the proxy keeps; any goroutine may read them.
type Stats struct {
	Accepted      uint64    // client connections accepted
	ConnectErrors uint64    // upstream connections that failed (CLIENT_CONNECTION_ERROR)
	Aborted       uint64    // connections reset because the other side ended with an error
	HalfCloses    uint64    // write sides shut down (Conn.CloseWrite) passing on a peer's end of stream
	Relays        uint64    // directions handed to the core's relay (Conn.RelayTo)
	Pauses        [2]uint64 // rx pauses, by direction (fromClient, fromUpstream)
	PeakPending   [2]int64  // most bytes one side had waiting, by direction
	RxWhilePaused uint64    // RAW_RX received while paused: never, if rx flow control works
	Open          int64     // connections open (client and upstream) or connecting
	Connecting    int64     // upstream connections not established yet
}

type proxy struct {
	cfg  config
	ctx  *core.Context
	ln   *core.Listener
	loop *exampleloop.Loop

	accepted, connectErrors, aborted, rxWhilePaused atomic.Uint64
	halfCloses, relays                              atomic.Uint64
	pauses                                          [2]atomic.Uint64
	peak                                            [2]atomic.Int64
	open, connecting                                atomic.Int64
}

// start creates the context, listens and services it on a goroutine of its
// own until close.
func start(cfg config) (*proxy, error) {
	if cfg.highWater <= 0 || cfg.lowWater <= 0 || cfg.lowWater > cfg.highWater {
		return nil, fmt.Errorf("highwater %d, lowwater %d: both must be positive, low not above high", cfg.highWater, cfg.lowWater)
	}
	if cfg.idle < 0 {
		return nil, fmt.Errorf("idle %v: must not be negative", cfg.idle)
	}
	// Checked here as Context.Connect checks it, which would otherwise
	// refuse it for every client, closing each without a word.
	if _, port, err := net.SplitHostPort(cfg.upstream); err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("upstream %s: port %q is not a number up to 65535", cfg.upstream, port)
	}
	if cfg.threads <= 0 {
		cfg.threads = 1
	}
	p := &proxy{cfg: cfg}
	client := core.Protocol{Name: "client", Callback: p.callback, RxChunk: rxChunk, AllowHalfOpen: true}
	upstream := core.Protocol{Name: "upstream", Callback: p.callback, RxChunk: rxChunk, AllowHalfOpen: true}
	set := exampleloop.PollSet(cfg.evlib)
	if set != nil {
		if cfg.threads > 1 {
			return nil, fmt.Errorf("-threads %d: the foreign loop of this example drives one service thread", cfg.threads)
		}
		client = set.Protocol(client)
	}
	ctx, err := core.New(core.Info{
		EventLib:       cfg.evlib,
		CountThreads:   cfg.threads,
		ConnectTimeout: cfg.connectTimeout,
		IdleTimeout:    cfg.idle,
		Protocols:      []core.Protocol{client, upstream},
	})
	if err != nil {
		return nil, err
	}
	p.ctx = ctx
	if p.ln, err = ctx.Listen("tcp", cfg.listen, "client"); err != nil {
		ctx.Destroy()
		return nil, err
	}
	p.loop = exampleloop.Start(ctx, set)
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// close destroys the context and waits for the loop to end.
func (p *proxy) close() error { return p.loop.Stop() }

func (p *proxy) stats() Stats {
	var s Stats
	s.Accepted, s.ConnectErrors, s.Aborted = p.accepted.Load(), p.connectErrors.Load(), p.aborted.Load()
	s.HalfCloses, s.Relays = p.halfCloses.Load(), p.relays.Load()
	s.RxWhilePaused, s.Open, s.Connecting = p.rxWhilePaused.Load(), p.open.Load(), p.connecting.Load()
	for i := range 2 {
		s.Pauses[i], s.PeakPending[i] = p.pauses[i].Load(), p.peak[i].Load()
	}
	return s
}

func (p *proxy) callback(ev core.Event) error {
	c := ev.Conn
	switch ev.Reason {
	case core.ReasonRawAdopt:
		if s, ok := c.User().(*side); ok { // the upstream, established
			s.connecting = false
			p.connecting.Add(-1)
			if err := p.relayTo(s); err != nil { // upstream -> client
				return err
			}
			if len(s.out) > 0 {
				return c.CallbackOnWritable() // then client -> upstream relays
			}
			if s.endOut {
				return p.closeWrite(s) // the client's input ended already
			}
			return p.relayTo(s.other)
		}
		return p.accept(ev)

	case core.ReasonRawRX:
		return p.relay(c.User().(*side), ev.Data)

	case core.ReasonRawRxEnd:
		// Every byte the peer sent was relayed; the end follows them.
		return p.endOutput(c.User().(*side).other)

	case core.ReasonRawWriteable:
		return p.writeable(c.User().(*side))

	case core.ReasonClientConnectionError:
		s := c.User().(*side)
		s.closed, s.connecting = true, false
		p.open.Add(-1)
		p.connecting.Add(-1)
		if !s.other.closed {
			// The 1st, 2nd, 4th, 8th... failure says why: the cause
			// without a line per client while the upstream is down.
			if n := p.connectErrors.Add(1); n&(n-1) == 0 {
				fmt.Fprintf(os.Stderr, "proxy: upstream: %v (%d connect errors so far)\n", ev.Err, n)
			}
			// Nothing was pending for the client: it closes at once.
			return s.other.conn.Close()
		}

	case core.ReasonRawClose:
		s := c.User().(*side)
		s.closed = true
		s.out = nil
		p.open.Add(-1)
		return p.ended(s, ev.Err)
	}
	return nil
}

// accept pairs an accepted client connection with a connection to the
// upstream, on the same service thread (a pair's sides call each other's
// methods, which are loop-only).
func (p *proxy) accept(ev core.Event) error {
	p.accepted.Add(1)
	p.open.Add(1)
	cl := &side{index: fromClient, conn: ev.Conn}
	up := &side{index: fromUpstream, other: cl, connecting: true}
	cl.other = up
	ev.Conn.SetUser(cl)
	conn, err := p.ctx.Connect("tcp", p.cfg.upstream, "upstream", core.WithUser(up), core.OnThread(ev.Thread.Index()))
	if err != nil {
		up.closed = true
		return err // closes the client
	}
	up.conn = conn
	p.open.Add(1)
	p.connecting.Add(1)
	return nil
}

// relay takes bytes s received for its other side, and pauses s when the
// other side has high water waiting.
func (p *proxy) relay(s *side, data []byte) error {
	if s.paused {
		p.rxWhilePaused.Add(1)
	}
	o := s.other
	if o.closed || o.writeShut {
		return nil // o is closed, being reset or done writing: nowhere to go
	}
	o.out = append(o.out, data...)
	w := o.waiting()
	raiseTo(&p.peak[s.index], int64(w))
	if !o.connecting {
		if err := o.conn.CallbackOnWritable(); err != nil {
			return err
		}
	}
	if w >= p.cfg.highWater && !s.paused {
		s.paused = true
		p.pauses[s.index].Add(1)
		return s.conn.RxFlowControl(false)
	}
	return nil
}

// writeable sends what waits for s in one Write, and resumes the other side
// once less than low water waits.
func (p *proxy) writeable(s *side) error {
	if len(s.out) > 0 {
		// Write accepts all of it; what the kernel did not take the core
		// keeps, and the next WRITEABLE comes once that has left.
		if _, err := s.conn.Write(s.out); err != nil {
			return err
		}
		s.out = s.out[:0]
		// What the core holds of this Write leaves before the relay's
		// first byte.
		if err := p.relayTo(s.other); err != nil || s.other.relaying {
			return err
		}
	}
	if s.endOut {
		// The other side's input ended (so it is not paused): after what
		// was just written, the end of stream.
		return p.closeWrite(s)
	}
	if o := s.other; o.paused && !o.closed {
		if s.waiting() >= p.cfg.lowWater {
			// The core holds more than low water: the WRITEABLE after
			// its flush resumes the other side.
			return s.conn.CallbackOnWritable()
		}
		o.paused = false
		return o.conn.RxFlowControl(true)
	}
	return nil
}

// relayTo hands the rest of s's input to the core's relay
// (core.Conn.RelayTo), once both sides are established and nothing the
// proxy holds for the other side is left: from then on the core moves it
// (with splice(2) where it can), bounded by one pipe's worth per direction,
// and s gets no RAW_RX; its RAW_RX_END still comes after the last byte.
// A client paused at high water while its upstream connected, whose
// peer ended its stream meanwhile, relays too: what the core kept goes
// first, then the relay ends with RAW_RX_END. Where the core cannot
// (core.ErrClosed: s was reset, or its RAW_RX_END came already), the
// direction stays on RAW_RX and Write.
func (p *proxy) relayTo(s *side) error {
	o := s.other
	if p.cfg.noRelay || s.relaying || s.closed || o.closed || s.connecting || o.connecting ||
		len(o.out) > 0 || o.endOut || o.writeShut {
		return nil
	}
	switch err := s.conn.RelayTo(o.conn); {
	case errors.Is(err, core.ErrClosed):
		return nil
	case err != nil:
		return err
	}
	s.relaying = true
	p.relays.Add(1)
	if s.paused { // at high water while the upstream connected
		s.paused = false
		return s.conn.RxFlowControl(true)
	}
	return nil
}

// endOutput passes the end of the other side's input on to s: once what
// waits for s is written, its write side is shut down.
func (p *proxy) endOutput(s *side) error {
	if s.closed || s.endOut {
		return nil
	}
	s.endOut = true
	switch {
	case s.connecting:
		return nil // RAW_ADOPT or the first WRITEABLE does it
	case len(s.out) > 0:
		return s.conn.CallbackOnWritable()
	default:
		return p.closeWrite(s)
	}
}

// closeWrite shuts s's write side down once the core has sent what it
// holds. If s's input has ended too, the core then closes it.
func (p *proxy) closeWrite(s *side) error {
	if s.writeShut {
		return nil
	}
	s.writeShut = true
	p.halfCloses.Add(1)
	return s.conn.CloseWrite()
}

// ended follows s's close on its other side. An orderly close (io.EOF or
// nil) comes only once s's input ended and its write side was shut, that
// is once both directions ended: the other side has then ended its input
// and shuts its output after what waits for it, and the core closes it.
// An error resets the other side.
func (p *proxy) ended(s *side, why error) error {
	o := s.other
	switch {
	case o.closed || errors.Is(why, core.ErrDestroyed):
		return nil
	case o.connecting:
		return o.conn.Close() // aborts the connect: CLIENT_CONNECTION_ERROR
	case why == nil || errors.Is(why, io.EOF):
		return p.endOutput(o) // so nothing to do: o's output ended with s's input
	default:
		if o.conn.Abort() == nil { // RAW_CLOSE, ErrAborted, follows this callback
			p.aborted.Add(1)
		}
		return nil // (else o is closing already)
	}
}

// raiseTo raises the high-water mark m to v.
func raiseTo(m *atomic.Int64, v int64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}
