//go:build unix

// Command httpd is a minimal HTTP/1.1 server on plugloop's core: GET and
// HEAD only, "hello\n" at /, 404 elsewhere, on any backend.
//
//	go run ./examples/httpd -evlib epoll -addr 127.0.0.1:8080
//	curl -v http://127.0.0.1:8080/
//	wrk -c 50 -d 5s http://127.0.0.1:8080/
//
// It shows what the library is for, in a protocol people know:
//
//   - Connections are kept alive: HTTP/1.1 unless the request says
//     "Connection: close", HTTP/1.0 only when it says "Connection:
//     keep-alive" (as ab -k does), and then the response says so too.
//     Otherwise the connection ends after its response,
//     with Conn.Close, which lets the response leave first, and with
//     core.Info.GracefulClose, which then waits for the client's end (a
//     lingering close: closing on unread input would reset the connection).
//     A client that shuts its write side down after its requests still gets
//     every response.
//   - Pipelined requests are parsed as they arrive and answered in order. All
//     responses a pass produced go out in one Conn.Write, in RAW_WRITEABLE.
//   - A client that sends requests and does not read the responses is pushed
//     back on: once -maxqueued responses wait, or the kernel would not take
//     the last write, the connection's rx is paused (rx flow control), and it
//     resumes when the core has sent everything and the parsed input is
//     answered. The memory a connection holds stays bounded: at most
//     -maxqueued responses, a request head and one RxChunk of input.
//   - A request head larger than -maxheader gets 431 and the connection
//     closes; other requests it cannot serve get 400, 405 or 501 and close too:
//     a malformed request line or header field (a space before the colon
//     included, which RFC 9112 makes an error lest a body pass for a
//     request) is a 400, and so is a CR that ends no line. As RFC 9112
//     allows, a line may end in a bare LF, and empty lines before a
//     request line are skipped.
//   - Idle connections are closed by the core (core.Info.IdleTimeout). A
//     client that trickles a request head, which keeps resetting the idle
//     timer, is closed -headertimeout after the head began (Conn.SetTimeout,
//     armed while part of a head waits and rx is on).
//   - Every response carries a Date header, formatted once a second.
//
// -evlib takes any backend name; PLUGLOOP_EVLIB overrides it. With -evlib
// foreign, the program's own unix.Poll loop (foreign.PollSet) drives plugloop.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
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
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "listen address HOST:PORT")
	flag.IntVar(&cfg.maxHeader, "maxheader", 8<<10, "largest request head in bytes; larger gets 431")
	flag.IntVar(&cfg.maxQueued, "maxqueued", 64, "responses a connection may have waiting before its rx pauses")
	flag.DurationVar(&cfg.idle, "idle", 60*time.Second, "close connections idle this long (0: never)")
	flag.DurationVar(&cfg.headerTimeout, "headertimeout", 10*time.Second, "close connections whose request head takes longer than this to arrive (0: never)")
	flag.Parse()

	srv, err := start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "httpd:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "httpd: serving http://%s/ with the %s backend; ^C stops\n", srv.addr(), srv.ctx.EventLib())
	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-sig.Done():
	case <-srv.ctx.Done():
	}
	if err := srv.close(); err != nil {
		fmt.Fprintln(os.Stderr, "httpd:", err)
		os.Exit(1)
	}
	s := srv.stats()
	fmt.Fprintf(os.Stderr, "httpd: stopped; %d requests, %d rx pauses\n", s.Requests, s.Pauses)
}

type config struct {
	evlib     string
	addr      string
	maxHeader int           // bytes of request head before 431
	maxQueued int           // responses waiting on one connection before its rx pauses
	idle      time.Duration // core.Info.IdleTimeout

	headerTimeout time.Duration // from a head's first byte to its end
}

// rxChunk caps one RAW_RX (core.Protocol.RxChunk): what a paused
// connection's last read brought beyond it, the core keeps for the resume.
const rxChunk = 16 << 10

// The responses, but for their Date header. Those ending a connection say
// so.
var (
	respOK            = newResponse("200 OK", "", "hello\n")
	respOKClose       = newResponse("200 OK", "Connection: close\r\n", "hello\n")
	respNotFound      = newResponse("404 Not Found", "", "not found\n")
	respOKKeep        = newResponse("200 OK", "Connection: keep-alive\r\n", "hello\n")
	respNotFoundKeep  = newResponse("404 Not Found", "Connection: keep-alive\r\n", "not found\n")
	respNotFoundClose = newResponse("404 Not Found", "Connection: close\r\n", "not found\n")
	resp400           = newResponse("400 Bad Request", "Connection: close\r\n", "")
	resp405           = newResponse("405 Method Not Allowed", "Allow: GET, HEAD\r\nConnection: close\r\n", "")
	resp431           = newResponse("431 Request Header Fields Too Large", "Connection: close\r\n", "")
	resp501           = newResponse("501 Not Implemented", "Connection: close\r\n", "")
)

// A response is written as status, the Date header, rest; rest ends with
// a body of body bytes.
type response struct {
	status, rest []byte
	body         int
}

func newResponse(status, headers, body string) response {
	return response{
		status: []byte("HTTP/1.1 " + status + "\r\n"),
		rest: []byte(headers + "Content-Type: text/plain\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + body),
		body: len(body),
	}
}

// head is the response to HEAD: the same header fields, no body.
func (r response) head() response {
	r.rest, r.body = r.rest[:len(r.rest)-r.body], 0
	return r
}

// isToken says whether s is an RFC 9110 token: a method or a field name.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// httpDate is net/http's TimeFormat, without linking net/http in.
const httpDate = "Mon, 02 Jan 2006 15:04:05 GMT"

// dateLine is the Date header for one second of the clock.
type dateLine struct {
	sec  int64
	line []byte
}

// date returns the Date header line for now, formatting it only when the
// second changed: a response costs a clock read, not a time.Format.
func (s *server) date() []byte {
	now := time.Now()
	if d := s.dateNow.Load(); d != nil && d.sec == now.Unix() {
		return d.line
	}
	d := &dateLine{sec: now.Unix(), line: []byte("Date: " + now.UTC().Format(httpDate) + "\r\n")}
	s.dateNow.Store(d)
	return d.line
}

// session is a connection's state (lws' per-session data).
type session struct {
	in          []byte // received, not parsed yet
	out         []byte // responses not handed to Conn.Write yet
	queued      int    // responses in out
	closing     bool   // out ends with the connection's last response
	paused      bool   // rx paused by this server
	headerTimed bool   // the head timeout is armed (Conn.SetTimeout)
}

// Stats are counters the server keeps; any goroutine may read them.
type Stats struct {
	Requests      uint64 // requests answered (queued for writing)
	Pauses        uint64 // times a connection's rx was paused
	RxWhilePaused uint64 // RAW_RX received while paused: never, if rx flow control works
	MaxQueued     int64  // most responses one connection had waiting
	MaxInput      int64  // most unparsed input bytes one connection held
	IdleClosed    uint64 // connections the idle timeout closed
	HeadTimedOut  uint64 // connections a timeout closed while part of a request head waited (-headertimeout)
}

type server struct {
	cfg  config
	ctx  *core.Context
	ln   *core.Listener
	loop *exampleloop.Loop

	requests, pauses, rxWhilePaused, idleClosed, headTimedOut atomic.Uint64
	maxQueued, maxInput                                       atomic.Int64
	dateNow                                                   atomic.Pointer[dateLine]
}

// start creates the context, listens and services it on a goroutine of its
// own until close.
func start(cfg config) (*server, error) {
	if cfg.maxHeader <= 0 || cfg.maxQueued <= 0 || cfg.idle < 0 || cfg.headerTimeout < 0 {
		return nil, fmt.Errorf("maxheader %d, maxqueued %d, idle %v, headertimeout %v: the sizes must be positive, the timeouts not negative",
			cfg.maxHeader, cfg.maxQueued, cfg.idle, cfg.headerTimeout)
	}
	s := &server{cfg: cfg}
	proto := core.Protocol{Name: "http", Callback: s.callback, RxChunk: rxChunk}
	set := exampleloop.PollSet(cfg.evlib)
	if set != nil {
		proto = set.Protocol(proto)
	}
	ctx, err := core.New(core.Info{
		EventLib:    cfg.evlib,
		IdleTimeout: cfg.idle,
		// Close waits for the client's end of stream after the last
		// response: closing with a request of the client's still unread
		// would reset the connection, and a reset can destroy the
		// response before the client read it.
		GracefulClose: true,
		Protocols:     []core.Protocol{proto},
	})
	if err != nil {
		return nil, err
	}
	s.ctx = ctx
	if s.ln, err = ctx.Listen("tcp", cfg.addr, "http"); err != nil {
		ctx.Destroy()
		return nil, err
	}
	s.loop = exampleloop.Start(ctx, set)
	return s, nil
}

func (s *server) addr() string { return s.ln.Addr().String() }

// close destroys the context and waits for the loop to end.
func (s *server) close() error { return s.loop.Stop() }

func (s *server) stats() Stats {
	return Stats{
		Requests: s.requests.Load(), Pauses: s.pauses.Load(), RxWhilePaused: s.rxWhilePaused.Load(),
		MaxQueued: s.maxQueued.Load(), MaxInput: s.maxInput.Load(), IdleClosed: s.idleClosed.Load(),
		HeadTimedOut: s.headTimedOut.Load(),
	}
}

func (s *server) callback(ev core.Event) error {
	c := ev.Conn
	switch ev.Reason {
	case core.ReasonRawAdopt:
		c.SetUser(&session{})

	case core.ReasonRawRX:
		ss := c.User().(*session)
		if ss.paused {
			s.rxWhilePaused.Add(1)
		}
		if ss.closing {
			return nil // the last response is queued; the rest is not read
		}
		ss.in = append(ss.in, ev.Data...)
		raiseTo(&s.maxInput, int64(len(ss.in)))
		return s.flow(c, ss)

	case core.ReasonRawWriteable:
		ss := c.User().(*session)
		if len(ss.out) > 0 {
			// The one write of this callback: every response queued.
			// The core keeps what the kernel does not take now.
			if _, err := c.Write(ss.out); err != nil {
				return err
			}
			ss.out, ss.queued = ss.out[:0], 0
		}
		if ss.closing {
			return c.Close() // after the core has sent the rest
		}
		return s.flow(c, ss)

	case core.ReasonRawClose:
		if errors.Is(ev.Err, core.ErrTimeout) {
			if ss, _ := c.User().(*session); ss != nil && ss.headerTimed {
				s.headTimedOut.Add(1)
			} else {
				s.idleClosed.Add(1)
			}
		}
	}
	return nil
}

// flow answers the complete requests held (up to maxQueued), then decides
// whether to read on: not while responses wait, the core holds output the
// kernel would not take, or a parsed-but-unanswered request is left.
func (s *server) flow(c *core.Conn, ss *session) error {
	backlog := s.parse(ss)
	raiseTo(&s.maxQueued, int64(ss.queued))
	if full := backlog || c.Buffered() > 0 || ss.closing; full != ss.paused {
		ss.paused = full
		if full && !ss.closing {
			s.pauses.Add(1)
		}
		if err := c.RxFlowControl(!full); err != nil {
			return err
		}
	}
	if err := s.timeHead(c, ss); err != nil {
		return err
	}
	if ss.queued > 0 || c.Buffered() > 0 {
		// Buffered alone: the WRITEABLE after the core's flush resumes rx.
		return c.CallbackOnWritable()
	}
	return nil
}

// timeHead arms the head timeout while part of a request head waits for
// the rest and rx is on, and disarms it otherwise: an idle keep-alive
// connection is the idle timeout's, and a paused one waits for the server,
// not for the client. Arming it only when it was not armed makes the bound
// run from the head's first byte, however slowly the rest trickles in.
func (s *server) timeHead(c *core.Conn, ss *session) error {
	want := s.cfg.headerTimeout > 0 && len(ss.in) > 0 && !ss.paused && !ss.closing
	if want == ss.headerTimed {
		return nil
	}
	ss.headerTimed = want
	d := time.Duration(0)
	if want {
		d = s.cfg.headerTimeout
	}
	return c.SetTimeout(d)
}

// parse queues a response for every complete request head in ss.in, in
// order, until maxQueued wait. It reports whether it stopped for that
// bound with a whole request still unparsed.
func (s *server) parse(ss *session) (backlog bool) {
	for !ss.closing {
		ss.in = skipEmptyLines(ss.in)
		end, next := headEnd(ss.in)
		if end < 0 && len(ss.in) < s.cfg.maxHeader {
			break // the head is not all here yet
		}
		if ss.queued >= s.cfg.maxQueued {
			return true
		}
		if end < 0 || next > s.cfg.maxHeader {
			s.queue(ss, resp431, true)
			break
		}
		resp, keep := answer(ss.in[:end])
		ss.in = ss.in[next:]
		s.queue(ss, resp, !keep)
	}
	if len(ss.in) == 0 {
		ss.in = nil // do not keep a burst's buffer for an idle connection
	}
	return false
}

// skipEmptyLines drops the empty lines before a request line, which RFC
// 9112 (2.2) asks a server to ignore: clients have sent a CRLF after a
// POST's body.
func skipEmptyLines(in []byte) []byte {
	for {
		switch {
		case bytes.HasPrefix(in, []byte("\r\n")):
			in = in[2:]
		case bytes.HasPrefix(in, []byte("\n")):
			in = in[1:]
		default:
			return in
		}
	}
}

// headEnd finds the empty line that ends the request head at the start of
// in: end is where the head's last line ends, next where what follows the
// empty line begins; end is -1 while it is not all here. A line may end
// in a bare LF, which RFC 9112 (2.2) lets a server take as CRLF: the
// empty line is the first LF followed by CRLF or LF.
func headEnd(in []byte) (end, next int) {
	lf, size := bytes.Index(in, []byte("\n\r\n")), 3
	before := in // where a bare-LF empty line would come first
	if lf >= 0 {
		before = in[:lf+1] // not past the first: pipelined input can be long
	}
	if i := bytes.Index(before, []byte("\n\n")); i >= 0 {
		lf, size = i, 2
	}
	if lf < 0 {
		return -1, 0
	}
	end = lf
	if end > 0 && in[end-1] == '\r' {
		end--
	}
	return end, lf + size
}

// lines splits a request head into its lines, each without its CRLF or
// LF. A CR anywhere else makes it malformed (ok false): RFC 9112 (2.2)
// lets a server reject a bare CR, which some parsers take for a line end.
func lines(head []byte) (out []string, ok bool) {
	for _, l := range strings.Split(string(head), "\n") {
		l = strings.TrimSuffix(l, "\r")
		if strings.ContainsRune(l, '\r') {
			return nil, false
		}
		out = append(out, l)
	}
	return out, true
}

func (s *server) queue(ss *session, resp response, last bool) {
	ss.out = append(ss.out, resp.status...)
	ss.out = append(ss.out, s.date()...)
	ss.out = append(ss.out, resp.rest...)
	ss.queued++
	ss.closing = last
	s.requests.Add(1)
}

// answer picks the response to one request head and whether the connection
// stays open after it.
func answer(head []byte) (resp response, keep bool) {
	ls, ok := lines(head)
	if !ok {
		return resp400, false
	}
	method, rest, ok1 := strings.Cut(ls[0], " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	// proto is the rest of the line: "HTTP/1.x" and nothing after it.
	if !ok1 || !ok2 || !isToken(method) || target == "" || strings.ContainsRune(target, '\t') ||
		len(proto) != len("HTTP/1.x") || !strings.HasPrefix(proto, "HTTP/1.") || proto[7] < '0' || proto[7] > '9' {
		return resp400, false
	}
	http10 := proto == "HTTP/1.0"
	var sayClose, sayKeep bool
	for _, f := range ls[1:] {
		name, value, ok := strings.Cut(f, ":")
		if !ok || !isToken(name) {
			// No whitespace before the colon, nor a folded line
			// (RFC 9112 5.1, 5.2): "Content-Length : 24" taken as no
			// field would leave its body to pass for a request.
			return resp400, false
		}
		value = strings.ToLower(strings.TrimSpace(value))
		switch strings.ToLower(name) {
		case "connection":
			for _, opt := range strings.Split(value, ",") {
				switch strings.TrimSpace(opt) {
				case "close":
					sayClose = true
				case "keep-alive":
					sayKeep = true
				}
			}
		case "content-length":
			if value != "0" {
				return resp501, false // a body would have to be read
			}
		case "transfer-encoding":
			return resp501, false
		}
	}
	keep = !sayClose && (sayKeep || !http10)
	switch method {
	case "GET":
		return route(target, keep, http10)
	case "HEAD":
		resp, keep = route(target, keep, http10)
		return resp.head(), keep
	default:
		return resp405, false
	}
}

// route picks the response for target.
func route(target string, keep, http10 bool) (response, bool) {
	switch {
	case target == "/" && keep && http10:
		return respOKKeep, true
	case target == "/" && keep:
		return respOK, true
	case target == "/":
		return respOKClose, false
	case keep && http10:
		return respNotFoundKeep, true
	case keep:
		return respNotFound, true
	default:
		return respNotFoundClose, false
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
