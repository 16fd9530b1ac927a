//go:build unix

package core

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// Options is a bit set of context options (lws' info.options). The low bits
// select a backend by flag; see the OptionEvlib constants.
type Options uint64

// Backend selection flags, one per backend name (see package evlib).
const (
	OptionEvlibPoll    = Options(evlib.FlagPoll)
	OptionEvlibEpoll   = Options(evlib.FlagEpoll)
	OptionEvlibKqueue  = Options(evlib.FlagKqueue)
	OptionEvlibGnet    = Options(evlib.FlagGnet)
	OptionEvlibNetpoll = Options(evlib.FlagNetpoll)
	OptionEvlibForeign = Options(evlib.FlagForeign)
)

// Callback is a protocol's handler for every Reason. A non-nil error returned
// for a connection-level reason closes that connection (lws' return -1); the
// RAW_CLOSE callback then carries the error. The error is ignored where
// there is nothing left to close or nothing a close could undo: after
// RAW_CLOSE and CLIENT_CONNECTION_ERROR, in the poll-fd reasons (also those
// that carry a Conn), and for the context- and thread-level reasons but
// PROTOCOL_INIT, whose error fails New.
//
// The core does not recover a callback's panic: like any panic it ends the
// program unless the goroutine it runs on recovers it (Service's caller,
// Run's for thread 0; Run's other threads and a library goroutine under
// evlib.CapLibraryGoroutines have no caller that could). A context left
// by a panic mid-pass stays held: it can be neither serviced nor
// destroyed cleanly. Return an error to close one connection instead.
type Callback func(ev Event) error

// Event is what a Callback receives. It is passed by value and must not be
// retained; Data is valid only during the callback.
type Event struct {
	// Reason says why the callback is called.
	Reason Reason
	// Conn is the connection, or nil for thread- and context-level reasons.
	Conn *Conn
	// Thread is the service thread the callback runs on (nil for
	// ProtocolInit and ProtocolDestroy).
	Thread *Thread
	// Protocol is the protocol whose callback this is.
	Protocol *Protocol
	// Data holds received bytes (ReasonRawRX).
	Data []byte
	// From is the sender of a datagram (ReasonRawRX on a UDP connection).
	From netip.AddrPort
	// Poll describes the fd for the poll-fd reasons.
	Poll PollArgs
	// Len is 1 for LockPoll/UnlockPoll around an add or delete, 0 around
	// a mode change.
	Len int
	// Err is why a connection closed (ReasonRawClose): io.EOF when the
	// peer ended its stream (once the input was delivered and the answers
	// to it sent, see Conn.CallbackOnWritable), ErrTimeout, ErrDestroyed,
	// a system error, the error a callback returned, or nil after
	// Conn.Close, or after Conn.CloseWrite once the peer's end was
	// delivered (RAW_RX_END, Protocol.AllowHalfOpen).
	Err error
}

// PollArgs is lws' struct lws_pollargs.
type PollArgs struct {
	// FD is the fd to watch, or to stop watching.
	FD int
	// Events is the interest from now on (none for DEL_POLL_FD).
	Events evlib.Events
	// PrevEvents is the interest before a CHANGE_MODE_POLL_FD.
	PrevEvents evlib.Events
}

// Protocol is a named set of behaviour for connections (lws' struct
// lws_protocols). The first protocol of a context also receives the poll-fd
// reasons.
type Protocol struct {
	// Name identifies the protocol to Listen, the Adopt calls and
	// Connect; it is unique within a context. Those calls, and the *All
	// methods, take "" for the context's first protocol, whatever its
	// name; a name no protocol has is ErrUnknownProtocol.
	Name string
	// Callback handles every Reason for the protocol's connections.
	Callback Callback
	// RxChunk caps the bytes handed to one RAW_RX callback; 0 means all
	// that one read returned. With a cap, input left over when rx flow
	// control pauses the connection is kept and delivered on resume.
	RxChunk int
	// AllowHalfOpen keeps a stream open after the peer ended its side in
	// order (its FIN: shutdown(SHUT_WR), "nc -N", a request that ends with
	// a half-close), like Node's allowHalfOpen: without it such a
	// connection closes with io.EOF once nothing is left to answer, within
	// Info.CloseTimeout, which a proxy relaying a long answer cannot live
	// with. With it, the connection gets RAW_RX_END after its last RAW_RX
	// and stays open, writable on request, with no bound but
	// Info.IdleTimeout and Conn.SetTimeout, until the application calls
	// Close (RAW_CLOSE nil once its output has left, as usual) or
	// CloseWrite (both sides being done, the connection then closes once
	// its output has left, RAW_CLOSE nil). A reset or an error still
	// closes it (RAW_CLOSE with an *OpError; errors.Is(err,
	// syscall.ECONNRESET) for a reset): at once where the backend declares
	// evlib.CapHangupWithoutInterest (epoll, poll, the foreign backend in
	// a poll(2) or epoll loop, netpoll through a helper goroutine on a dup
	// once the stream ended), which keeps the connection watched with no
	// interest, at no cost while the peer is quiet; elsewhere (gnet,
	// kqueue) it is out of the poll set and learns of the reset
	// only when it writes, or when Info.IdleTimeout or its own SetTimeout
	// ends it.
	AllowHalfOpen bool
	// User is free for the application.
	User any
}

// Resolver looks up a host's IP addresses, as *net.Resolver does: network
// is "ip", "ip4" or "ip6". Connect tries the addresses in the order given
// (Go's resolver sorts them by RFC 6724), alternating address families for
// network "tcp".
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Info describes a context to create (lws' lws_context_creation_info).
type Info struct {
	// Options holds option flags, including at most one OptionEvlib flag.
	Options Options
	// EventLib names a backend ("epoll", "poll"...). The PLUGLOOP_EVLIB
	// environment variable overrides both it and the flags.
	EventLib string
	// Foreign is an application-owned loop for backends that can attach
	// to one (evlib.CapForeignLoop), one per service thread: entry i is
	// thread i's, a thread past the end or with a nil entry runs a loop of
	// its own, and more entries than threads are an error.
	Foreign []any
	// Protocols, at least one. Names must be unique.
	Protocols []Protocol
	// FDLimit caps the fds the service threads watch. 0 means the process'
	// RLIMIT_NOFILE less a reserve of 64 for descriptors that are not
	// connections (the application's files, the runtime's poller, a
	// backend's own), divided by what each watched fd costs where the
	// backend holds a dup of every fd (evlib.Descriptor.DupsPerFD, as
	// netpoll does). At the cap, listeners stop accepting (connections wait
	// in the kernel's backlog) and resume when a connection closes. Past
	// the process limit accept(2) fails with EMFILE instead, and the
	// listener rests for 100 ms, logging a warning each time: a process
	// holding more than 64 other descriptors should set FDLimit lower.
	FDLimit int
	// CountThreads is the number of service threads (lws' count_threads),
	// each with its own backend instance and, in Run, its own goroutine;
	// 0 means 1. Accepted connections go to the least-loaded thread (as
	// loaded when the accepting thread reserves room for the connection,
	// just before accept(2)) and are only ever serviced there; so do
	// connections adopted or started with the Context methods (AdoptFD,
	// Connect, ListenUDP...), unless OnThread names a thread (see OnThread
	// for who adopts them where). Listeners live on thread 0. Info.Foreign,
	// if given, has one entry per thread.
	CountThreads int
	// ReusePort makes Listen (TCP, with several threads) open one
	// SO_REUSEPORT listener per thread, each accepting for its own thread,
	// so the kernel spreads connections instead of thread 0. Listen must
	// then run while no thread is being serviced (before Run).
	ReusePort bool
	// FDLimitPerThread caps each thread's fds; 0 shares FDLimit (or the
	// process limit) out evenly.
	FDLimitPerThread int
	// RaiseFDLimit raises the process' RLIMIT_NOFILE soft limit to its
	// hard limit first.
	RaiseFDLimit bool
	// MaxConnsPerIP closes accepted connections beyond this many from one
	// peer address at once, before RAW_ADOPT (lws' ip_limit_wsi); 0 means
	// no limit.
	MaxConnsPerIP int
	// Keepalive, when Idle > 0, turns on TCP keepalive for accepted
	// connections, so a silently dead peer is noticed.
	Keepalive Keepalive
	// IdleTimeout closes a stream connection that neither received nor
	// wrote for that long; 0 disables it. Files and datagram sockets have
	// no peer to give up on (a UDP server's socket is quiet while nobody
	// asks): it leaves them alone, to Conn.SetTimeout if they want one.
	IdleTimeout time.Duration
	// CloseTimeout bounds how long a connection whose peer hung up keeps
	// buffered input waiting to be consumed (lws' PENDING_TIMEOUT_CLOSE_ACK)
	// and, after the peer's orderly end, its answers waiting to be sent,
	// and how long Conn.Close waits for output to drain and, with
	// GracefulClose, for the peer; 0 means 3 s. Negative is ErrInvalid. A
	// connection whose protocol has AllowHalfOpen is not bounded after the
	// peer's orderly end: it lives until the application closes it (or
	// IdleTimeout or SetTimeout does); its Close is bounded as usual.
	// Conn.SetTimeout cannot lift or stretch the bound.
	CloseTimeout time.Duration
	// ConnectTimeout bounds a client connection from Connect to
	// established, resolution included; 0 means 5 s. Negative is
	// ErrInvalid.
	ConnectTimeout time.Duration
	// ConnectAttemptDelay is how long a client connection's connect to
	// one address may stay in progress before Connect races the next
	// address beside it (RFC 8305 "Happy Eyeballs", lws' parallel
	// sockets): a black-holed route or a server dropping SYNs then costs
	// this long, not the whole ConnectTimeout. 0 means 250 ms, RFC 8305's
	// recommendation. Negative turns racing off: addresses are tried one
	// at a time, the next only once the previous failed. At most
	// MaxConnectRacers connects of one connection are in flight at once;
	// each counts against FDLimit while it is.
	ConnectAttemptDelay time.Duration
	// Resolver looks up the addresses of a host name Connect is given;
	// nil means net.DefaultResolver. Tests and applications with their
	// own name service (a cache, a fixed table, DNS over something else)
	// supply theirs. It is called on a goroutine of its own, never on a
	// service thread, with a context that ends at ConnectTimeout.
	Resolver Resolver
	// GracefulClose makes Conn.Close of a stream shut its write side down
	// once output has drained and wait for the peer to close (lws' policy
	// for its poll loop). It is the same on every backend.
	GracefulClose bool
	// HandleSignals makes Run turn SIGINT and SIGTERM into an orderly
	// Destroy while it runs (lws' default signal handling for its own
	// loop). An app-driven (foreign) context never installs a handler.
	HandleSignals bool
	// Notifiers follow the system state from the first step on (see
	// Notifier); Context.RegisterNotifier adds more later.
	Notifiers []Notifier
	// Logger receives diagnostics; nil means slog.Default().
	Logger *slog.Logger
	// User is free for the application; see Context.User.
	User any
}

// Keepalive sets TCP keepalive: probes start after Idle without traffic,
// every Interval, and Probes unanswered ones drop the connection. The
// system counts whole seconds: Idle and Interval are rounded up to them.
// Zero Interval or Probes keep the system's values; on OpenBSD only Idle > 0
// (keepalive on) has an effect, as the system has no per-socket settings.
type Keepalive struct {
	Idle, Interval time.Duration
	Probes         int
}

// Context is a plugloop instance: its protocols, backend choice and service
// threads (lws' struct lws_context). New makes one: a zero Context is not
// usable, nor are zero Conn, Listener, Thread or Timer values, which only
// the core hands out.
type Context struct {
	info      Info
	protocols []*Protocol
	backend   evlib.Descriptor
	threads   []*Thread
	log       *slog.Logger
	fdLimit   int

	sys           system
	perIP         ipCounts    // accepted connections per peer, with MaxConnsPerIP
	fds           fdSet       // every fd the threads own or are being handed
	acceptBlocked atomic.Bool // some thread's listeners stopped at the fd limit
	destroyReq    atomic.Bool
	live          atomic.Int32 // threads not yet torn down
	finishOnce    sync.Once
	done          chan struct{}
	life          context.Context // cancelled with done: ends lookups in flight
	endLife       context.CancelFunc
}

// New creates a context and its service thread with the backend Info
// selects. PROTOCOL_INIT is delivered to every protocol before New returns;
// one that returns an error fails New with that error wrapped, as in lws,
// after the protocols initialized before it got PROTOCOL_DESTROY. An Info
// it cannot take as it stands (no protocol, a negative count or
// timeout that no field documents, Options bits no option has) is an error
// wrapping ErrInvalid that names the field; an unknown or unavailable
// backend wraps evlib.ErrUnknown or evlib.ErrUnavailable.
func New(info Info) (*Context, error) {
	if len(info.Protocols) == 0 {
		return nil, fmt.Errorf("%w: at least one protocol is required", ErrInvalid)
	}
	// Read as "already expired", they closed every Close'd connection at
	// once with ErrTimeout, dropping its pending output.
	if info.CloseTimeout < 0 {
		return nil, fmt.Errorf("%w: negative CloseTimeout (%v)", ErrInvalid, info.CloseTimeout)
	}
	if info.ConnectTimeout < 0 {
		return nil, fmt.Errorf("%w: negative ConnectTimeout (%v)", ErrInvalid, info.ConnectTimeout)
	}
	// These meant "none" or "no limit", unlike what they said.
	if info.IdleTimeout < 0 {
		return nil, fmt.Errorf("%w: negative IdleTimeout (%v)", ErrInvalid, info.IdleTimeout)
	}
	if info.Keepalive.Interval < 0 {
		return nil, fmt.Errorf("%w: negative Keepalive.Interval (%v)", ErrInvalid, info.Keepalive.Interval)
	}
	for _, f := range []struct {
		name string
		n    int
	}{{"CountThreads", info.CountThreads}, {"FDLimit", info.FDLimit}, {"FDLimitPerThread", info.FDLimitPerThread}, {"MaxConnsPerIP", info.MaxConnsPerIP}, {"Keepalive.Probes", info.Keepalive.Probes}} {
		if f.n < 0 {
			return nil, fmt.Errorf("%w: negative %s (%d)", ErrInvalid, f.name, f.n)
		}
	}
	if extra := info.Options &^ Options(evlib.FlagMask); extra != 0 {
		return nil, fmt.Errorf("%w: unknown Options bits %#x", ErrInvalid, uint64(extra))
	}
	for _, n := range info.Notifiers {
		if n.Notify == nil {
			return nil, fmt.Errorf("%w: notifier %q has no Notify", ErrInvalid, n.Name)
		}
	}
	if n := max(info.CountThreads, 1); len(info.Foreign) > n {
		// One entry per thread: one more would be a loop nobody serves.
		return nil, fmt.Errorf("%w: %d foreign loops (Info.Foreign) for %d service threads", ErrInvalid, len(info.Foreign), n)
	}
	d, err := evlib.Select(evlib.Flag(info.Options)&evlib.FlagMask, info.EventLib)
	if err != nil {
		return nil, err
	}
	c := &Context{info: info, backend: d, log: info.Logger, done: make(chan struct{})}
	c.life, c.endLife = context.WithCancel(context.Background())
	if c.log == nil {
		c.log = slog.Default()
	}
	if info.CloseTimeout == 0 {
		c.info.CloseTimeout = 3 * time.Second
	}
	if info.ConnectTimeout == 0 {
		c.info.ConnectTimeout = 5 * time.Second
	}
	seen := map[string]bool{}
	for i := range info.Protocols {
		p := info.Protocols[i]
		if p.Callback == nil {
			return nil, fmt.Errorf("%w: protocol %q has no callback", ErrInvalid, p.Name)
		}
		if p.RxChunk < 0 {
			return nil, fmt.Errorf("%w: protocol %q has a negative RxChunk (%d)", ErrInvalid, p.Name, p.RxChunk)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("%w: two protocols are named %q", ErrInvalid, p.Name)
		}
		seen[p.Name] = true
		c.protocols = append(c.protocols, &p)
	}
	c.fdLimit = info.FDLimit
	if info.RaiseFDLimit {
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
			rl.Cur = rl.Max
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
				c.log.Warn("plugloop: raising RLIMIT_NOFILE failed", "err", err)
			}
		}
	}
	if c.fdLimit <= 0 {
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 0 && rl.Cur < 1<<24 {
			c.fdLimit = int(rl.Cur)
		} else {
			c.fdLimit = 1 << 16
		}
	}
	n := max(info.CountThreads, 1)
	perThread := info.FDLimitPerThread
	if perThread <= 0 {
		watchable := c.fdLimit
		if info.FDLimit <= 0 {
			// The process limit counts every other descriptor too: a cap
			// at the limit itself is never reached, and accept(2) meets
			// EMFILE first (a 100 ms rest, a warning) where the cap would
			// just stop accepting until a close. Where the backend dups
			// every fd the limit counts those as well: past it the dup of
			// an accepted connection would fail and drop the connection.
			watchable = max(watchable-fdReserve, 1) / (1 + d.DupsPerFD)
		}
		perThread = max(watchable/n, 1)
	}
	for i := range n {
		var foreign any
		if i < len(info.Foreign) {
			foreign = info.Foreign[i]
		}
		t, err := newThread(c, i, foreign, perThread)
		if err != nil {
			c.closeUnstarted()
			return nil, err
		}
		c.threads = append(c.threads, t)
		if t.wfd.R >= 0 {
			c.fds.add(t.wfd.R)
		}
	}
	t := c.threads[0]
	c.live.Store(int32(len(c.threads)))
	c.log.Debug("plugloop: context created", "evlib", d.Name, "fdlimit", c.fdLimit)
	// The thread is not serviced yet, so the creating goroutine owns it.
	t.mode.Store(modeBusy)
	t.setOwner()
	for i, p := range c.protocols {
		if err := t.callback(Event{Reason: ReasonProtocolInit, Protocol: p}); err != nil {
			// As lws fails the vhost: the protocols initialized so far are
			// told PROTOCOL_DESTROY, the others nothing.
			for _, q := range c.protocols[:i] {
				_ = t.callback(Event{Reason: ReasonProtocolDestroy, Protocol: q})
			}
			t.release(true)
			c.closeUnstarted()
			return nil, fmt.Errorf("plugloop: protocol %q failed PROTOCOL_INIT: %w", p.Name, err)
		}
	}
	for _, t := range c.threads {
		if t.wfd.R >= 0 {
			// newThread registered the wake fd; announced after
			// PROTOCOL_INIT, and before a notifier may destroy the
			// context (which deletes it again).
			t.pollCallback(ReasonLockPoll, nil, t.wfd.R, 0, 0, 1)
			t.pollCallback(ReasonAddPollFD, nil, t.wfd.R, evlib.Readable, 0, 0)
			t.pollCallback(ReasonUnlockPoll, nil, t.wfd.R, 0, 0, 1)
		}
	}
	c.sys.notifiers = append([]Notifier(nil), info.Notifiers...)
	c.sys.target = SystemOperational
	c.stepSystem()
	t.release(true)
	return c, nil
}

// closeUnstarted closes the wake fds and backends of the threads New made
// before it failed: nothing else of the context exists yet.
func (c *Context) closeUnstarted() {
	for _, t := range c.threads {
		t.wfd.Close()
		t.be.Close()
	}
}

// EventLib returns the name of the backend the context runs on.
func (c *Context) EventLib() string { return c.backend.Name }

// Caps returns the capabilities the context's backend declares.
func (c *Context) Caps() evlib.Caps { return c.backend.Caps }

// User returns Info.User.
func (c *Context) User() any { return c.info.User }

// Thread returns service thread i (lws' tsi), or nil if out of range.
func (c *Context) Thread(i int) *Thread {
	if i < 0 || i >= len(c.threads) {
		return nil
	}
	return c.threads[i]
}

// CountThreads returns the number of service threads.
func (c *Context) CountThreads() int { return len(c.threads) }

// Protocol returns the protocol called name, or nil.
func (c *Context) Protocol(name string) *Protocol {
	for _, p := range c.protocols {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func (c *Context) protocol(name string) (*Protocol, error) {
	if name == "" {
		return c.protocols[0], nil
	}
	if p := c.Protocol(name); p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownProtocol, name)
}

// CancelService wakes every service thread and delivers EVENT_WAIT_CANCELLED
// to every protocol on each (lws_cancel_service). Any goroutine may call it.
// Calls that arrive before the thread got round to it are coalesced, but
// each call is followed by at least one delivery. After destroy it does
// nothing and returns ErrDestroyed.
func (c *Context) CancelService() error {
	var err error
	for _, t := range c.threads {
		if e := t.CancelService(); e != nil {
			err = e
		}
	}
	return err
}

// Stats returns the counters of all service threads added together. Any
// goroutine may call it.
func (c *Context) Stats() Stats {
	var s Stats
	for _, t := range c.threads {
		s.add(t.Stats())
	}
	return s
}

// fdReserve is what the default fd cap leaves of the process' fd limit to
// descriptors that are not connections (the application's, the runtime's
// poller, a backend's own).
const fdReserve = 64

// Run services every thread until the context is destroyed (it then returns
// nil), cctx is cancelled (it returns cctx.Err() and the context stays
// usable) or a thread's backend fails to wait (it stops the other threads
// and returns an error wrapping ErrBackend; the context stays usable).
// Thread 0 runs on the calling goroutine. If the context was destroyed, or
// is being destroyed, before Run takes the thread, Run returns
// ErrDestroyed. A thread that another goroutine services (Run, Service)
// makes Run return ErrInService; one that another goroutine holds for a
// loop-only call (a Listen beside `go ctx.Run(...)`) Run waits for. When
// the application's loop drives the backend (the foreign mode), Run
// returns an error wrapping evlib.ErrAppDriven at once.
func (c *Context) Run(cctx context.Context) error {
	for i, t := range c.threads {
		if err := t.enter(true); err != nil {
			for _, u := range c.threads[:i] {
				u.leave()
			}
			return err
		}
		if t.appDriven {
			for _, u := range c.threads[:i+1] {
				u.leave()
			}
			return errAppLoop
		}
		t.runStop.Store(false)
	}
	for _, t := range c.threads[1:] {
		// Held for the goroutine that will service it, which names itself
		// when it starts: until then nobody passes for its owner (thread
		// 0's callbacks run on this goroutine meanwhile).
		t.disown()
	}
	if c.info.HandleSignals {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		stopSigs := make(chan struct{})
		go func() {
			select {
			case <-sigs:
				c.Destroy()
			case <-stopSigs:
			}
		}()
		defer func() {
			signal.Stop(sigs)
			close(stopSigs)
		}()
	}
	unhook := context.AfterFunc(cctx, c.stopRun)
	defer unhook()
	errs := make([]error, len(c.threads))
	// A thread whose backend failed stops the others: Run returns its
	// error once they all have.
	runThread := func(i int) {
		if errs[i] = c.threads[i].run(cctx); errs[i] != nil {
			c.stopRun()
		}
	}
	var wg sync.WaitGroup
	for i, t := range c.threads[1:] {
		wg.Go(func() {
			t.setOwner() // this goroutine services it from now on
			runThread(i + 1)
		})
	}
	runThread(0)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// stopRun makes every thread's run return at its next pass.
func (c *Context) stopRun() {
	for _, t := range c.threads {
		t.runStop.Store(true)
		t.wake()
	}
}

// run services the thread, which the caller has entered, until destroy
// (nil) or Run's context ends (its error).
func (t *Thread) run(cctx context.Context) error {
	if lp, ok := t.be.(evlib.Looper); ok {
		err := lp.Loop((*sink)(t))
		t.mode.Store(modeBusy)
		t.setOwner() // the last pass may have run on a goroutine of the backend's
		if t.ctx.destroyReq.Load() {
			t.teardown()
			return nil
		}
		t.leave()
		if err != nil {
			return fmt.Errorf("%w: %s loop: %w", ErrBackend, t.ctx.backend.Name, err)
		}
		return cctx.Err()
	}
	for {
		if t.runStop.Load() {
			t.leave()
			return cctx.Err()
		}
		alive, err := t.pass(-1)
		if !alive {
			return nil // destroyed; pass released the thread
		}
		if err != nil {
			t.leave()
			return err
		}
	}
}

var errAppLoop = fmt.Errorf("plugloop: Run: %w; service it with Thread.ServiceFD and Thread.Service(0)", evlib.ErrAppDriven)

// Destroy closes every connection and listener (each gets RAW_CLOSE with
// ErrDestroyed), delivers PROTOCOL_DESTROY, and releases the backends. It is
// idempotent and safe from any goroutine. When no goroutine is servicing the
// context, it completes before returning (except after a callback's panic
// left a thread held, see Callback: then nothing completes, and Done is
// never closed). Otherwise — including when called
// from inside a callback — the goroutine servicing each thread completes it
// once its current callback returns; Done reports completion and Run returns.
// From the call on, the context does no more I/O and delivers no callback
// but RAW_CLOSE, the poll-fd reasons and PROTOCOL_DESTROY: the rest of the
// ready batch, pending WRITEABLEs, timers and posted functions are dropped,
// and adopting or listening returns ErrDestroyed. Loop-only calls on open
// connections still work inside the callback that called Destroy.
func (c *Context) Destroy() error {
	c.destroyReq.Store(true)
	for _, t := range c.threads {
		if t.mode.CompareAndSwap(modeIdle, modeBusy) {
			t.setOwner()
			t.teardown()
			continue
		}
		t.wake()
	}
	return nil
}

// Done returns a channel closed when destruction has completed.
func (c *Context) Done() <-chan struct{} { return c.done }

// threadDown is called by each thread at the end of its teardown; the last
// one finishes the context.
func (c *Context) threadDown(t *Thread) {
	if c.live.Add(-1) != 0 {
		return
	}
	c.finishOnce.Do(func() {
		cur := c.SystemState()
		for _, n := range c.sys.notifiers {
			n.Notify(c, cur, SystemContextDestroying) // told, not asked
		}
		c.sys.state.Store(int32(SystemContextDestroying))
		c.sys.mu.Lock()
		c.sys.attached = nil
		c.sys.pending.Store(0)
		c.sys.mu.Unlock()
		for _, p := range c.protocols {
			_ = t.callback(Event{Reason: ReasonProtocolDestroy, Protocol: p})
		}
		close(c.done)
		c.endLife()
	})
}

// ipCounts counts connections per peer address across threads.
type ipCounts struct {
	mu sync.Mutex
	n  map[netip.Addr]int
}

// take counts one more connection from ip unless it already has max.
func (p *ipCounts) take(ip netip.Addr, max int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[ip] >= max {
		return false
	}
	if p.n == nil {
		p.n = map[netip.Addr]int{}
	}
	p.n[ip]++
	return true
}

func (p *ipCounts) add(ip netip.Addr, d int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[ip] += d; p.n[ip] <= 0 {
		delete(p.n, ip)
	}
}

// Stats are a service thread's counters (see evlib.Counters).
type Stats struct {
	Waits, InterestChanges, Wakes, Reads, Writes, Accepts, Closes,
	Dispatches, ForcedServices, TimersFired uint64
	// Splices counts the splice(2) calls of relays (Conn.RelayTo) and
	// Relayed the bytes relays moved to their targets, so that a
	// benchmark can report system calls per relayed byte. A relay that
	// copies (see RelayTo) counts its reads and writes as Reads and
	// Writes.
	Splices, Relayed uint64
}

// Syscalls is the number of system calls the counters cover.
func (s Stats) Syscalls() uint64 {
	return s.Waits + s.InterestChanges + s.Wakes + s.Reads + s.Writes + s.Accepts + s.Closes + s.Splices
}

func (s *Stats) add(o Stats) {
	s.Waits += o.Waits
	s.InterestChanges += o.InterestChanges
	s.Wakes += o.Wakes
	s.Reads += o.Reads
	s.Writes += o.Writes
	s.Accepts += o.Accepts
	s.Closes += o.Closes
	s.Dispatches += o.Dispatches
	s.ForcedServices += o.ForcedServices
	s.TimersFired += o.TimersFired
	s.Splices += o.Splices
	s.Relayed += o.Relayed
}
