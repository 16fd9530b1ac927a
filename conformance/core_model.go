//go:build unix

package conformance

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The model-based test runs programs: byte strings that an interpreter
// turns into a few connections (accepted, adopted, or client connections
// the application makes with Context.Connect: to the model's own listener,
// directly or through a host name whose first address refuses, so that
// Connect races its addresses (on Linux), or to an address that refuses,
// which must get one CLIENT_CONNECTION_ERROR with ECONNREFUSED and nothing
// else) and a sequence of steps, each an operation
// of the peer (write, read, half-close, close), of the application from a
// posted function or armed to run inside the next callback of a kind
// (write in RAW_WRITEABLE, rx pause and resume, Close, CloseWrite, Abort,
// returning an error, Conn timers and timeouts, thread timers, RelayTo
// another connection: see core_model_relay.go; the poll-fd callbacks
// about a connection too, see core_model_poll.go, a client connection's
// Close or Abort while it connects among them: CLIENT_CONNECTION_ERROR with
// ErrClosed once the core's step is done, and no RAW_ADOPT), or
// CancelService, with or without Protocol.AllowHalfOpen (half the
// programs: then a half-open connection must get RAW_RX_END once, after
// the last RAW_RX and never while paused, and stay open until the
// application ends it, which it does once it answered). After Abort
// nothing but RAW_CLOSE, once, with ErrAborted, before anything else
// the loop runs, and the peer of a TCP connection reads a reset. A
// model of what core's documentation promises follows every callback and
// every byte, so that interleavings nobody wrote down as a test are
// checked too. Every check is a property of the order of events, never of
// how long something took, except that no timer fires before its time.
//
// The suite runs a fixed list of programs (seeds expanded with PCG), the
// programs that once found a bug (core_model_found.go) and, on request,
// random ones (SweepEnv); a fuzz target feeds RunModel arbitrary ones.

// RunModel runs one program of the suite's model-based test (the
// "Model" subtest of the "Core" part) against the backend registered
// under name, with the core driven by Context.Run, or by PollSetHost for
// an app-driven backend. The program is any byte string: its first bytes
// choose the connections (up to four: accepted and adopted loopback TCP,
// a unix socket pair, a pipe where the backend declares evlib.CapFiles,
// a client connection made with Context.Connect to a loopback listener,
// to a host name that resolves to a refusing address and that listener,
// or to a loopback port that refuses) and the context's options, each following group of four bytes one
// step; a step beyond the 400th is ignored, and any input is a valid
// program. It is meant for fuzzing the core (see core's FuzzModel); a
// failure names the step and prints the program. Like the suite, it checks
// that the process holds the descriptors and goroutines it held before,
// and it must not be called from a parallel test. What a backend's library
// opens for the life of the process on first use must be open before the
// first call, or it counts as leaked: for netpoll, call
// netpoll.Initialize() first, as evlib_netpoll's own tests do.
func RunModel(t *testing.T, name string, program []byte) {
	t.Helper()
	d := lookup(t, name)
	if os.Getenv(evlib.EnvVar) != "" {
		t.Setenv(evlib.EnvVar, "")
	}
	var host *Host
	if d.Caps&evlib.CapAppDriven != 0 {
		h := PollSetHost(d.Name)
		host = &h
	}
	s := &suite{name: d.Name, desc: d, host: host}
	baseFDs, baseG := openFDs(), runtime.NumGoroutine()
	// Registered first, so it runs last: after the harness and the
	// application's loops are gone.
	t.Cleanup(func() {
		deadline := time.Now().Add(hang)
		for runtime.NumGoroutine() > baseG && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > baseG {
			t.Errorf("conformance: model: %d goroutines after the program, %d before", n, baseG)
		}
		if diff := fdDiff(baseFDs, openFDs()); diff != "" {
			t.Errorf("conformance: model: descriptors leaked or lost:\n%s", diff)
		}
	})
	// A fuzz worker that runs an input for 10s is killed as hung: the
	// model's own guard must come first, to say what it waited for.
	s.runModel(t, program, "", hang/2)
}

// modelRuns returns how many programs the Model subtest runs and how many
// steps each has: fewer under the race detector, which slows the loop
// down several times over.
func modelRuns() (programs, steps int) {
	if raceEnabled {
		return 8, 150
	}
	return 16, 200
}

// Checklist 2, 3, 6, 8, 9, 12, 14-16, 18, 19, 22, 36 and 37, mixed at
// random: every program of modelRuns, the found programs and the sweep,
// on the backend. A failure names the seed and the step; the subtest for
// that seed alone runs it again. The first program that fails ends the
// subtest: a backend's fault fails most programs alike, each after its
// hang guard, and the first says all there is to say.
func (s *suite) testModel(t *testing.T) {
	type program struct {
		name, what string
		code       func() []byte
	}
	var all []program
	programs, steps := modelRuns()
	for seed := range uint64(programs) {
		all = append(all, program{fmt.Sprintf("seed=%d", seed), fmt.Sprintf("seed %d (rerun: -run 'Conformance/Core/Model/seed=%d$')", seed, seed),
			func() []byte { return modelProgram(seed, steps) }})
	}
	found, err := foundPrograms()
	require.NoError(t, err)
	for _, p := range found {
		all = append(all, program{"found=" + p.name, fmt.Sprintf("found/%s.hex (rerun: -run 'Conformance/Core/Model/found=%s$')", p.name, p.name),
			func() []byte { return p.program }})
	}
	seed, n, err := modelSweep()
	require.NoError(t, err)
	for i := range n {
		name := fmt.Sprintf("sweep=%d.%d", seed, i)
		all = append(all, program{name, "", func() []byte { return sweepProgram(seed, i) }})
	}
	for i, p := range all {
		ok := t.Run(p.name, func(t *testing.T) {
			code, what := p.code(), p.what
			if what == "" { // a sweep's: rerun with its program
				what = fmt.Sprintf("%s (rerun: %s=%d:%d and -run 'Conformance/Core/Model/%s$'; program %x)", p.name, SweepEnv, seed, n, p.name, code)
			}
			s.runModel(t, code, what, hang)
		})
		if !ok {
			if rest := len(all) - i - 1; rest > 0 {
				t.Logf("conformance: model: %s failed; the %d programs after it were not run (each runs alone with -run)", p.name, rest)
			}
			return
		}
	}
}

// modelProgram expands a seed into a program of the given number of steps.
func modelProgram(seed uint64, steps int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x6d6f64656c)) // "model"
	p := make([]byte, modelHeader+steps*modelStepLen)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

const (
	maxModelConns = 4
	modelHeader   = 2 + maxModelConns // connections, options, a byte per connection
	modelStepLen  = 4                 // operation, connection, two arguments
	maxModelSteps = 400
	modelTimers   = 4 // thread timers
)

// connKind is how a connection of the model comes to the core.
type connKind uint8

const (
	kindTCPAccepted connKind = iota // accepted from the context's listener; the peer dialled
	kindUnix                        // a socket pair's end, AdoptFD
	kindTCPAdopted                  // a loopback TCP connection, AdoptConn
	kindPipe                        // a pipe's read end, AdoptFD; the peer only writes (evlib.CapFiles)
	kindConnect                     // Context.Connect to the model's own TCP listener; the peer is the accepted end
	kindRefused                     // Context.Connect to an address that refuses: CLIENT_CONNECTION_ERROR, no peer
	kindRace                        // Context.Connect to a host name (Info.Resolver): an address that refuses, then the listener's (Linux)
	numKinds
)

func (k connKind) String() string {
	return [...]string{"accepted tcp", "unix pair", "adopted tcp", "pipe", "connect", "refused connect", "racing connect"}[k]
}

// tcp reports whether the application's end is a TCP socket.
func (k connKind) tcp() bool {
	return k == kindTCPAccepted || k == kindTCPAdopted || k == kindConnect || k == kindRace
}

// client reports whether the application made the connection with
// Context.Connect.
func (k connKind) client() bool { return k == kindConnect || k == kindRefused || k == kindRace }

// modelConfig is what a program's header chooses.
type modelConfig struct {
	conns    int
	kinds    [maxModelConns]connKind
	flags    [maxModelConns]byte         // see open
	graceful bool                        // Info.GracefulClose
	small    bool                        // 16 KiB socket buffers, so they fill sooner
	rxChunk  int                         // Protocol.RxChunk
	halfOpen bool                        // Protocol.AllowHalfOpen
	addActs  [maxModelConns]*modelAction // done in the connection's ADD_POLL_FD, if any
}

func (c modelConfig) String() string {
	kinds := make([]string, c.conns)
	for i := range kinds {
		kinds[i] = c.kinds[i].String()
	}
	return fmt.Sprintf("connections [%s], GracefulClose %v, RxChunk %d, small buffers %v, AllowHalfOpen %v",
		strings.Join(kinds, ", "), c.graceful, c.rxChunk, c.small, c.halfOpen)
}

type modelStep struct{ op, conn, a, b byte }

// decodeModel reads a program; missing bytes read as zero.
func (s *suite) decodeModel(p []byte) (modelConfig, []modelStep) {
	at := func(i int) byte {
		if i < len(p) {
			return p[i]
		}
		return 0
	}
	var c modelConfig
	c.conns = 1 + int(at(0))%maxModelConns
	opt := at(1)
	c.graceful = opt&1 != 0
	c.small = opt&2 != 0
	c.rxChunk = [...]int{0, 512, 4096, 16384}[opt>>2&3]
	c.halfOpen = opt&16 != 0
	for i := range c.conns {
		b := at(2 + i)
		c.kinds[i] = s.kindOf(b)
		c.flags[i] = b / byte(numKinds)
		c.addActs[i] = openAction(c.kinds[i], opt>>5, b, byte(i))
	}
	var steps []modelStep
	for i := modelHeader; i < len(p) && len(steps) < maxModelSteps; i += modelStepLen {
		steps = append(steps, modelStep{at(i), at(i + 1), at(i + 2), at(i + 3)})
	}
	return c, steps
}

// kindOf maps a byte to a connection kind the backend can serve.
func (s *suite) kindOf(b byte) connKind {
	k := connKind(b % byte(numKinds))
	if k == kindPipe && s.desc.Caps&evlib.CapFiles == 0 {
		k = kindUnix
	}
	if k == kindRace && runtime.GOOS != "linux" {
		k = kindConnect // (no loopback address but 127.0.0.1 to refuse on)
	}
	return k
}

// chunkSize maps two bytes to a size from 1 B to 512 KiB: below 16 KiB
// each power of two as likely as the others, from 16 KiB on three times
// as likely, so that socket buffers fill.
func chunkSize(a, b byte) int {
	v := int(a)<<8 | int(b)
	e := v % 32
	if e >= 19 {
		e = 14 + (e-19)%5
	}
	base := 1 << e
	return base + (v>>5)%base
}

// modelDelays are the delays of timers and timeouts: due within the
// program, or an hour (never, for the test).
var modelDelays = [...]time.Duration{0, time.Microsecond, 100 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, time.Hour}

func modelDelay(b byte) time.Duration { return modelDelays[int(b)%len(modelDelays)] }

// ---- the streams ----

// Each connection carries two streams, peer to application and back,
// whose byte at offset i is fixed by the connection's number and i: a
// window of one table, whose period is odd, so that a block lost,
// repeated or moved by any power of two is caught.
const (
	streamPeriod = 1<<19 + 4093
	maxStreamRun = 1 << 19 // the longest slice streamBytes returns
)

// streamTable is one period and, repeated after it, the first
// maxStreamRun bytes again, so that any run of a stream is one slice.
var streamTable = sync.OnceValue(func() []byte {
	p := pattern(0x6d6f64656c, streamPeriod)
	return append(p, p[:maxStreamRun]...)
})

type direction int

const (
	toApp direction = iota
	toPeer
)

func (d direction) String() string { return [...]string{"peer-to-app", "app-to-peer"}[d] }

func streamStart(id int, d direction) int64 { return int64(2*id+int(d)) * 104729 % streamPeriod }

// streamBytes returns n (at most maxStreamRun) bytes of a stream from off.
func streamBytes(id int, d direction, off int64, n int) []byte {
	s := (streamStart(id, d) + off) % streamPeriod
	return streamTable()[s : s+int64(n)]
}

// streamDiff returns "" if p is the stream from off on, else where and
// how it differs.
func streamDiff(id int, d direction, off int64, p []byte) string {
	for done := 0; done < len(p); {
		n := min(len(p)-done, maxStreamRun)
		want, got := streamBytes(id, d, off+int64(done), n), p[done:done+n]
		if !bytes.Equal(want, got) {
			i := 0
			for want[i] == got[i] {
				i++
			}
			at := off + int64(done+i)
			msg := fmt.Sprintf("the %s stream is wrong at byte %d (in %d bytes from %d): got %#02x, want %#02x",
				d, at, len(p), off, got[i], want[i])
			if j := streamLocate(id, d, at, got[i:]); j >= 0 {
				msg += fmt.Sprintf("; the bytes there are the stream's from byte %d (%+d)", j, j-at)
			}
			return msg
		}
		done += n
	}
	return ""
}

// streamLocate finds where in the stream the bytes p start, nearest to
// offset near, or returns -1: to tell a repeat from a loss.
func streamLocate(id int, d direction, near int64, p []byte) int64 {
	if len(p) < 16 {
		return -1
	}
	i := bytes.Index(streamTable()[:streamPeriod+15], p[:16])
	if i < 0 {
		return -1
	}
	rel := (int64(i) - streamStart(id, d) - near) % streamPeriod
	switch {
	case rel > streamPeriod/2:
		rel -= streamPeriod
	case rel < -streamPeriod/2:
		rel += streamPeriod
	}
	if near+rel < 0 {
		rel += streamPeriod
	}
	return near + rel
}

// ---- the model ----

// errModelRefused is what a callback of the model returns to close its
// connection at once.
var errModelRefused = errors.New("conformance: the model's callback refused the connection")

type actionKind uint8

const (
	actWrite       actionKind = iota // queue a chunk and ask for RAW_WRITEABLE
	actPause                         // RxFlowControl(false)
	actResume                        // RxFlowControl(true)
	actClose                         // Conn.Close
	actError                         // return an error from the callback
	actTimer                         // Conn.SetTimer
	actThreadTimer                   // AfterFunc, or Reset of a thread timer
	actCloseWrite                    // Conn.CloseWrite
	actAbort                         // Conn.Abort
	actRelay                         // Conn.RelayTo another connection of the program
	numActions
)

// modelAction is what the application does inside a callback.
type modelAction struct {
	kind actionKind
	size int
	d    time.Duration
	j    int  // thread timer
	to   byte // RelayTo: which other slot (see relaySlot)
	// Armed for a poll-fd callback about the connection (see
	// core_model_poll.go): the reason it waits for, and how many such
	// callbacks it lets pass first.
	poll core.Reason
	skip int
}

// modelActions maps a byte to an action, each as often as it should be
// picked: closing ones seldom, or most steps would meet closed
// connections.
var modelActions = weighted[actionKind]([]int{
	actWrite: 6, actPause: 4, actResume: 4, actClose: 1, actError: 1, actTimer: 2, actThreadTimer: 2, actCloseWrite: 2,
	actAbort: 1, actRelay: 5,
})

func decodeAction(a, b byte) modelAction {
	return modelAction{kind: modelActions[int(a)%len(modelActions)], size: chunkSize(b, a>>3),
		d: modelDelay(b >> 2), j: int(b>>5) % modelTimers, to: b}
}

// weighted returns a table that holds each index i weights[i] times.
func weighted[T ~uint8](weights []int) []T {
	var tab []T
	for i, w := range weights {
		for range w {
			tab = append(tab, T(i))
		}
	}
	return tab
}

func (a modelAction) String() string {
	switch a.kind {
	case actWrite:
		return fmt.Sprintf("write %d B", a.size)
	case actPause:
		return "pause rx"
	case actResume:
		return "resume rx"
	case actClose:
		return "Close"
	case actError:
		return "return an error"
	case actTimer:
		return fmt.Sprintf("SetTimer(%v)", a.d)
	case actCloseWrite:
		return "CloseWrite"
	case actAbort:
		return "Abort"
	case actRelay:
		return fmt.Sprintf("RelayTo another connection (%d)", a.to)
	default:
		return fmt.Sprintf("thread timer %d in %v", a.j, a.d)
	}
}

// modelConn is one connection of a program: the peer's end, owned by the
// test goroutine, and the application's, owned by the loop goroutine.
type modelConn struct {
	id   int
	slot int
	kind connKind
	// Set before adoption: what RAW_ADOPT does.
	pauseAtAdopt bool
	adoptChunk   int
	pauseFirstRX bool // pause rx in the first RAW_RX
	resumeTimer  bool // a TIMER soon, that resumes rx

	peer peerEnd
	app  appEnd
	out  outStream // what the peer receives (see core_model_relay.go)
	// The bytes the peer may have sent: peer.wrote, raised before a write
	// to what it tries to write, for the loop goroutine (see gapRX).
	peerMax atomic.Int64
	readbuf int64  // the stream's first bytes, given with WithReadbuf
	local   string // a client connection's address, as its RAW_ADOPT saw it: its peer's remote address
}

func (mc *modelConn) String() string {
	return fmt.Sprintf("conn %d (%s, slot %d)", mc.id, mc.kind, mc.slot)
}

// peerEnd is the peer's side of a connection: a non-blocking descriptor.
type peerEnd struct {
	fd     int
	queued int64 // bytes the program had the peer send (the read buffer included)
	wrote  int64 // of those, bytes the kernel took
	read   int64 // bytes received, each checked against the app's stream
	shut   bool  // the write side is shut, closed or broken: nothing more is sent
	eof    bool  // receiving ended: end of stream, an error, or the peer closed
	closed bool  // the peer closed its descriptor: it receives nothing more
	quiet  bool  // reported a hangup with nothing left to do: left out of waits
	wrErr  bool  // a write failed: that took the socket's error, and a read after it says end of stream
}

// appEnd is the application's side of a connection, as the model knows it.
type appEnd struct {
	c         *core.Conn
	adopted   bool
	received  int64 // bytes delivered by RAW_RX, each checked against the peer's stream
	paused    bool  // from RxFlowControl(false) returning until RxFlowControl(true)
	wantW     bool  // a CallbackOnWritable awaits its RAW_WRITEABLE
	chunks    []int // sizes still to write, one per RAW_WRITEABLE
	written   int64 // bytes Write accepted
	noWrite   bool  // CallbackOnWritable said ErrClosed: the peer closed
	closing   bool  // Close was called (or Abort)
	errored   bool  // a callback returned errModelRefused
	peerEnded bool  // the peer half-closed or closed (set just before it did)
	// The peer closed (set just before it did): a reset, or a write to a
	// peer gone, may end the stream, after which nothing more is sent. A
	// peer that only half-closed still reads: what the application wrote
	// or writes reaches it, and a WRITEABLE asked for comes.
	peerClosed bool
	peerSent   int64 // the bytes the peer had sent when it ended its stream
	wrClosed   bool  // CloseWrite returned nil: nothing more is written
	wrFirst    bool  // CloseWrite came before RAW_RX_END (or with none yet)
	rxEnded    bool  // RAW_RX_END came
	aborted    bool  // Abort returned nil
	// A client connection (Context.Connect): connecting from Connect
	// until RAW_ADOPT or CLIENT_CONNECTION_ERROR (failed, and closed, its
	// Err in closeErr); the fds its poll-fd callbacks added and did not
	// delete meanwhile.
	connecting bool
	failed     bool
	dialFDs    map[int]bool
	dialAdds   int  // ADD_POLL_FDs while connecting: one per attempt started
	resetDue   bool // Abort reset a TCP connection that sent no FIN (no CloseWrite, no GracefulClose): its peer must read an error

	timerPending   bool
	timerAt        time.Time // the TIMER must not come before
	timerLong      bool
	timeoutPending bool
	timeoutAt      time.Time // the ErrTimeout close must not come before
	timeoutLong    bool

	onRX, onWriteable, onTimer []modelAction // armed: one per callback of that kind
	onPoll                     []modelAction // armed: one per poll-fd callback of its reason (core_model_poll.go)

	relayTo   *modelConn // RelayTo(relayTo) returned nil, and the relay did not end yet
	relayFrom *modelConn // the source of a relay to this connection
	relayHup  bool       // a relay to it ended after its peer ended: the core may have queued its close with io.EOF
	// Its relay's target ended after its peer ended its stream: the relay
	// may have ended with the input before (see relaysEnd).
	relayMaybeDone bool
	// Resumed after its relay's target ended (see resumeSource): its
	// RAW_RX goes on from an offset not known yet, at least gapMin (the
	// relay's start), gapAt if the socket told (else -1); gapBuf holds
	// what RAW_RX delivered meanwhile; gapOut is the target's stream,
	// whose run of this input the resumed input must not overlap.
	gap    bool
	gapMin int64
	gapAt  int64
	gapBuf []byte
	gapOut *outStream

	closed   bool
	closeErr error
}

// modelTimer is a thread timer (Thread.AfterFunc) of the model.
type modelTimer struct {
	tm      *core.Timer
	pending bool
	at      time.Time // must not fire before
	long    bool
	act     *modelAction // done when it fires, to conn
	conn    *modelConn
}

type model struct {
	s      *suite
	t      *testing.T
	h      *harness
	cfg    modelConfig
	prog   []byte
	what   string // the seed, for messages; "" for a program of RunModel's
	guard  time.Duration
	nsteps int
	ln     *core.Listener // accepts the kindTCPAccepted connections
	tcp    net.Listener   // accepts the peers' ends of the kindTCPAdopted and kindConnect ones
	// Bound to a loopback address and port, never listening: a connect
	// there is refused (kindRefused).
	refuse     int
	refuseAddr string
	// Bound to raceRefused, on tcp's port, never listening: the host name
	// raceHost resolves to it, then to tcp's address (kindRace, Linux).
	raceFD int

	// Test goroutine.
	slots  []*modelConn
	all    []*modelConn
	trace  []string
	nextID int
	rbuf   []byte
	resets int // peers of aborted TCP connections that read a reset
	strays int // connections accepted from tcp that no peer wanted: connects given up

	step         atomic.Int64 // the step being run (nsteps+1: settling), for problems seen on the loop
	cancelIssued atomic.Int64
	destroying   atomic.Bool

	// Loop goroutine.
	problems   []string
	cancelSeen int64 // cancelIssued as of the last EVENT_WAIT_CANCELLED
	partial    int   // Writes the kernel took only in part
	drains     int   // Closes with output pending
	wrCloses   int   // CloseWrites that returned nil
	timers     [modelTimers]modelTimer
	// Connections Abort closed whose RAW_CLOSE has not come yet: it must
	// come before anything else the loop runs.
	aborting []*modelConn
	aborts   int                       // Aborts that returned nil
	abortsDr int                       // of them, on a connection draining after Close
	abortsCl int                       // Aborts that said ErrClosed
	appSlots [maxModelConns]*modelConn // slots, as the loop goroutine knows them
	// Relays that started (relaysEnded of them from a source whose peer
	// had ended its stream), bad inputs refused, relays that ended with
	// their input, ended by their target's end, calls a target refused.
	relays, relaysEnded, relayBad, relayDone, relayGone, relayRefused int
	// Sources resumed after their relay's target ended; of them, how many
	// the model found the offset of (by the socket's count: exact) and
	// could not tell (given up); the most bytes between what a target's
	// peer had got of a run and where its source's RAW_RX resumed.
	resumed, gapsResolved, gapsExact, gapUnknown int
	gapDropped                                   int64
	// Model code running on the loop goroutine (a callback, a posted
	// function, a thread timer): a poll-fd callback nested in one of its
	// calls does nothing (see core_model_poll.go).
	inApp int
	// The connection the next accept is for: bound in its ADD_POLL_FD.
	acceptNext *modelConn
	// Actions done in poll-fd callbacks, by reason; of them, in the
	// DEL_POLL_FD of a connection the core was closing; poll-fd callbacks
	// with an action armed skipped because they came inside a call of the
	// model's.
	pollActs             map[core.Reason]int
	pollClosed, pollNest int
	// Client connections started, established, refused, given up (Close
	// or Abort while connecting, in one of its poll-fd callbacks).
	connects, connected, refused, connClosed int
	// Racing connects (kindRace) established; of them, how many had both
	// attempts added (else the refused one failed in connect(2) itself).
	raced, racedBoth int
}

// runModel runs a program; guard bounds each wait for the peers and the
// application to get somewhere.
func (s *suite) runModel(t *testing.T, program []byte, what string, guard time.Duration) {
	cfg, steps := s.decodeModel(program)
	m := &model{s: s, t: t, cfg: cfg, prog: program, what: what, guard: guard, nsteps: len(steps), rbuf: make([]byte, 64<<10)}
	m.h = s.newHarness(t, core.Info{
		// Longer than any wait of the suite: a close or a hangup never
		// runs out of time in a program, whose model would otherwise
		// have to know when it did.
		CloseTimeout: 6 * hang,
		// Likewise: a client connection is established or refused.
		ConnectTimeout: 6 * hang,
		// A racing connect's second address starts when the first is
		// refused, or beside it if that takes longer than this: the
		// model checks the order of what follows, never how long.
		ConnectAttemptDelay: 50 * time.Microsecond,
		Resolver:            modelResolver{},
		GracefulClose:       cfg.graceful,
		Protocols:           []core.Protocol{{Name: "model", Callback: m.callback, RxChunk: cfg.rxChunk, AllowHalfOpen: cfg.halfOpen}},
	})
	t.Cleanup(m.closePeers) // before the harness' cleanup destroys the context
	var err error
	// Accepted sockets take their buffers from the listener: set before
	// the handshake, the window scale fits them (set after it, the window
	// shrinks and the peer waits for zero-window probes, 200ms each).
	lc := net.ListenConfig{Control: m.control}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	m.ln, err = m.h.ctx.AdoptListener(ln, "")
	if err != nil {
		ln.Close()
	}
	require.NoError(t, err)
	m.tcp, err = lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { m.tcp.Close() })
	m.refuse, m.refuseAddr = refusingSocket(t, [4]byte{127, 0, 0, 1}, 0)
	t.Cleanup(func() { unix.Close(m.refuse) })
	m.raceFD = -1
	if runtime.GOOS == "linux" {
		m.raceFD, _ = refusingSocket(t, raceRefused.As4(), m.tcp.Addr().(*net.TCPAddr).Port)
		t.Cleanup(func() { unix.Close(m.raceFD) })
	}
	m.h.start()
	m.slots = make([]*modelConn, cfg.conns)
	for k := range cfg.conns {
		m.open(k, cfg.kinds[k], cfg.flags[k], cfg.addActs[k])
	}
	for i, st := range steps {
		m.step.Store(int64(i + 1))
		m.run(i+1, st)
	}
	m.step.Store(int64(len(steps) + 1))
	m.settle()
	m.finish()
}

// ---- failures ----

// fatalf fails the test with the program, the step and the steps before.
func (m *model) fatalf(format string, args ...any) {
	m.t.Helper()
	step := fmt.Sprintf("step %d of %d", m.step.Load(), m.nsteps)
	if m.step.Load() > int64(m.nsteps) {
		step = "after the last step (settling)"
	}
	what := m.what
	if what == "" {
		what = fmt.Sprintf("program %x", m.prog)
	}
	last := m.trace[max(0, len(m.trace)-25):]
	m.t.Fatalf("conformance: model %s, %s: %s\n  %s\n  steps so far (last %d):\n    %s",
		what, step, fmt.Sprintf(format, args...), m.cfg, len(last), strings.Join(last, "\n    "))
}

// problem records, on the loop goroutine, a broken promise; the test
// goroutine reports it after its next posted function.
func (m *model) problem(mc *modelConn, format string, args ...any) {
	if len(m.problems) >= 10 { // the first ones tell; a broken stream would go on and on
		return
	}
	p := fmt.Sprintf(format, args...)
	if mc != nil {
		p = mc.String() + ": " + p
	}
	m.problems = append(m.problems, fmt.Sprintf("(seen during step %d) %s", m.step.Load(), p))
}

// do runs f on the loop goroutine and fails the test with whatever the
// model or the recorder found wrong so far.
func (m *model) do(f func()) {
	m.t.Helper()
	var probs []string
	m.h.do(func() {
		m.checkAborted("a posted function")
		m.inApp++
		f()
		m.inApp--
		probs = append(probs, m.problems...)
	})
	m.h.rec.mu.Lock()
	probs = append(probs, m.h.rec.problems...)
	m.h.rec.mu.Unlock()
	if len(probs) > 0 {
		m.fatalf("%s", strings.Join(probs, "\n  "))
	}
}

func (m *model) note(format string, args ...any) {
	m.trace = append(m.trace, fmt.Sprintf("%d: ", m.step.Load())+fmt.Sprintf(format, args...))
}

// ---- connections ----

// open makes a new connection in slot k. flags: bit 0 pauses rx in
// RAW_ADOPT, bit 1 asks for RAW_WRITEABLE there (with a chunk to write),
// bits 2-3 choose a read buffer handed over with core.WithReadbuf, bit 4
// pauses rx in the first RAW_RX, bit 5 sets a TIMER that resumes rx.
// addAct, if not nil, is done in the connection's ADD_POLL_FD (a client
// connection's: in the poll-fd callback it names, see openAction). An accepted
// connection is bound to mc in its ADD_POLL_FD (see onPoll), which then has
// RAW_ADOPT of the model's; were it not, the test goroutine does the same
// right after it.
func (m *model) open(k int, kind connKind, flags byte, addAct *modelAction) {
	t := m.t
	m.nextID++
	mc := &modelConn{id: m.nextID, slot: k, kind: kind, peer: peerEnd{fd: -1}}
	mc.pauseAtAdopt, mc.pauseFirstRX, mc.resumeTimer = flags&1 != 0, flags&16 != 0, flags&32 != 0
	if flags&2 != 0 && kind != kindPipe {
		mc.adoptChunk = chunkSize(flags, byte(m.nextID))
	}
	readbuf := [...]int{0, 0, 100, 70000}[flags>>2&3]
	if kind == kindTCPAccepted || kind.client() {
		readbuf = 0
	}
	m.slots[k], m.all = mc, append(m.all, mc)
	m.do(func() {
		m.appSlots[k] = mc
		if addAct != nil {
			mc.app.onPoll = append(mc.app.onPoll, *addAct)
		}
	})
	inAdd := "in its ADD_POLL_FD nothing"
	if addAct != nil {
		inAdd = fmt.Sprintf("in its %v (after %d of them) %v", addAct.poll, addAct.skip, addAct)
	}
	m.note("open %v: in RAW_ADOPT pause %v, write %d B, pause in the first RAW_RX %v, a TIMER to resume %v; read buffer %d B; %s",
		mc, mc.pauseAtAdopt, mc.adoptChunk, mc.pauseFirstRX, mc.resumeTimer, readbuf, inAdd)
	var opts []core.AdoptOption
	if readbuf > 0 {
		opts = append(opts, core.WithReadbuf(streamBytes(mc.id, toApp, 0, readbuf)))
		mc.peer.queued, mc.peer.wrote = int64(readbuf), int64(readbuf)
		mc.peerMax.Store(int64(readbuf))
		mc.readbuf = int64(readbuf)
	}
	opts = append(opts, core.WithUser(mc))
	var c *core.Conn
	var err error
	switch kind {
	case kindTCPAccepted:
		mark := m.h.rec.mark()
		m.do(func() { m.acceptNext = mc })
		mc.peer.fd = m.dialReset(m.ln.Addr(), addAct != nil && addAct.kind == actAbort)
		if mc.peer.fd < 0 {
			// Aborted in its ADD_POLL_FD, its reset came before the
			// handshake was seen done: the peer read the reset.
			mc.peer.shut, mc.peer.eof, mc.peer.closed = true, true, true
			m.resets++
		}
		e := m.h.rec.waitEventFrom(t, "RAW_ADOPT of the accepted connection", mark, is(core.ReasonRawAdopt, nil))
		m.do(func() {
			// Bound in its ADD_POLL_FD, it had RAW_ADOPT of the model's.
			if m.acceptNext == mc {
				m.acceptNext = nil
				e.conn.SetUser(mc)
				m.adopted(mc, e.conn)
			}
		})
		return
	case kindUnix:
		fd, peer := nonblockPair(t)
		mc.peer.fd = peer
		if err := cmp.Or(m.buffers(fd), m.buffers(peer)); err != nil {
			unix.Close(fd)
			m.fatalf("socket buffers: %v", err)
		}
		m.do(func() { c, err = m.adopt(func() (*core.Conn, error) { return m.h.ctx.AdoptFD(fd, "", opts...) }) })
		if err != nil {
			unix.Close(fd)
		}
	case kindTCPAdopted:
		mc.peer.fd = m.dial(m.tcp.Addr())
		srv := m.acceptPeer(sockName(t, mc.peer.fd))
		m.do(func() { c, err = m.adopt(func() (*core.Conn, error) { return m.h.ctx.AdoptConn(srv, "", opts...) }) })
		if err != nil {
			srv.Close()
		}
	case kindPipe:
		var p [2]int
		require.NoError(t, nonblockPipe(&p))
		mc.peer.fd = p[1]
		m.do(func() { c, err = m.adopt(func() (*core.Conn, error) { return m.h.ctx.AdoptFD(p[0], "", opts...) }) })
		if err != nil {
			unix.Close(p[0])
		}
	case kindConnect, kindRefused, kindRace:
		m.connect(mc, opts)
		return
	}
	if err != nil {
		m.fatalf("adopting %v: %v", mc, err)
	}
	var same bool
	m.do(func() { same = mc.app.c == c })
	if !same {
		m.fatalf("%v: RAW_ADOPT did not come with the Conn that the adoption returned", mc)
	}
}

// connect opens a client connection (kindConnect, kindRefused, kindRace): Connect
// from a posted function, then, once RAW_ADOPT came, the peer is the
// connection the model's TCP listener accepted from its address. Connect
// does not wait for the connect: an action armed for one of its poll-fd
// callbacks (see core_model_poll.go) meets the connection connecting.
func (m *model) connect(mc *modelConn, opts []core.AdoptOption) {
	t := m.t
	addr := m.tcp.Addr().String()
	switch mc.kind {
	case kindRefused:
		addr = m.refuseAddr
	case kindRace:
		addr = net.JoinHostPort(raceHost, fmt.Sprint(m.tcp.Addr().(*net.TCPAddr).Port))
	}
	mark := m.h.rec.mark()
	var c *core.Conn
	var err error
	var connecting bool
	m.do(func() {
		c, err = m.h.ctx.Connect("tcp4", addr, "model", opts...)
		if err == nil {
			connecting = c.Connecting()
			mc.app.c, mc.app.connecting, mc.app.dialFDs = c, true, map[int]bool{}
			m.connects++
		}
	})
	switch {
	case err != nil:
		m.fatalf("%v: Connect(%q): %v", mc, addr, err)
	case !connecting:
		m.fatalf("%v: the Conn Connect returned does not report Connecting", mc)
	}
	e := m.h.rec.waitEventFrom(t, "RAW_ADOPT or CLIENT_CONNECTION_ERROR of "+mc.String(), mark, func(e event) bool {
		return e.conn == c && (e.reason == core.ReasonRawAdopt || e.reason == core.ReasonClientConnectionError)
	})
	var local string
	m.do(func() { local = mc.local })
	if e.reason == core.ReasonClientConnectionError {
		// No peer: nothing to send, nothing to read.
		mc.peer.shut, mc.peer.eof, mc.peer.closed = true, true, true
		return
	}
	nc := m.acceptPeer(local)
	defer nc.Close()
	mc.peer.fd = dupFD(t, nc.(*net.TCPConn))
}

// acceptPeer accepts from the model's TCP listener the connection from
// address from. Another one is the peer of a connect the application gave
// up, which the kernel may have completed: it is closed.
func (m *model) acceptPeer(from string) net.Conn {
	tl := m.tcp.(*net.TCPListener)
	require.NoError(m.t, tl.SetDeadline(time.Now().Add(m.guard)))
	defer tl.SetDeadline(time.Time{})
	for {
		nc, err := tl.Accept()
		if err != nil {
			m.fatalf("accepting the connection from %s: %v", from, err)
		}
		if nc.RemoteAddr().String() == from {
			return nc
		}
		m.strays++
		nc.Close()
	}
}

// sockName returns the address a socket is bound to, as net.TCPAddr
// writes it.
func sockName(t testing.TB, fd int) string {
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	if sa, ok := sa.(*unix.SockaddrInet4); ok {
		return (&net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}).String()
	}
	return fmt.Sprint(sa)
}

// The host name of kindRace, which modelResolver resolves to raceRefused,
// where nothing listens, then to 127.0.0.1, where the model's listener is:
// Connect's first attempt is refused, the second wins.
const raceHost = "model.test"

var raceRefused = netip.MustParseAddr("127.0.0.2")

type modelResolver struct{}

func (modelResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if host == raceHost {
		return []netip.Addr{raceRefused, netip.MustParseAddr("127.0.0.1")}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// refusingSocket returns a TCP socket bound to ip and port (0: any free
// one), never listening, and its address: a connect there is refused
// (ECONNREFUSED).
func refusingSocket(t testing.TB, ip [4]byte, port int) (int, string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	unix.CloseOnExec(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: ip, Port: port}); err != nil {
		unix.Close(fd)
		require.NoError(t, err)
	}
	return fd, sockName(t, fd)
}

// control gives a socket 16 KiB buffers if the program asks for small
// ones (net.ListenConfig.Control, net.Dialer.Control).
func (m *model) control(_, _ string, rc syscall.RawConn) error {
	var err error
	cerr := rc.Control(func(fd uintptr) { err = m.buffers(int(fd)) })
	return cmp.Or(cerr, err)
}

// buffers gives the socket fd 16 KiB buffers if the program asks for
// small ones.
func (m *model) buffers(fd int) error {
	if !m.cfg.small {
		return nil
	}
	return cmp.Or(unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<10))
}

// dial connects a peer to addr and returns its end as a non-blocking
// descriptor of its own.
func (m *model) dial(addr net.Addr) int { return m.dialReset(addr, false) }

// dialReset is dial, that returns -1 if the connection was reset and reset
// says it may be.
func (m *model) dialReset(addr net.Addr, reset bool) int {
	d := net.Dialer{Control: m.control}
	nc, err := d.Dial("tcp4", addr.String())
	if reset && errors.Is(err, syscall.ECONNRESET) {
		return -1
	}
	require.NoError(m.t, err)
	defer nc.Close()
	return dupFD(m.t, nc.(*net.TCPConn))
}

// adopted is the model's RAW_ADOPT.
func (m *model) adopted(mc *modelConn, c *core.Conn) {
	a := &mc.app
	a.c, a.adopted = c, true
	if mc.pauseAtAdopt {
		m.pause(mc)
	}
	if mc.adoptChunk > 0 {
		m.queueWrite(mc, mc.adoptChunk)
	}
	if mc.pauseFirstRX {
		a.onRX = append(a.onRX, modelAction{kind: actPause})
	}
	if mc.resumeTimer {
		m.setTimer(mc, 100*time.Microsecond)
		a.onTimer = append(a.onTimer, modelAction{kind: actResume})
	}
}

func (m *model) closePeers() {
	for _, mc := range m.all {
		if mc.peer.fd >= 0 {
			unix.Close(mc.peer.fd)
			mc.peer.fd = -1
		}
	}
}

// ---- the application: callbacks ----

func (m *model) callback(ev core.Event) error {
	switch ev.Reason {
	case core.ReasonAddPollFD, core.ReasonChangeModePollFD, core.ReasonDelPollFD, core.ReasonLockPoll, core.ReasonUnlockPoll:
		m.onPoll(ev)
		return nil
	case core.ReasonEventWaitCancelled, core.ReasonRawAdopt, core.ReasonRawRX, core.ReasonRawWriteable, core.ReasonTimer, core.ReasonRawClose, core.ReasonRawRxEnd,
		core.ReasonClientConnectionError:
	default:
		return nil
	}
	if ev.Reason != core.ReasonRawClose {
		m.checkAborted(ev.Reason.String())
	}
	if ev.Reason == core.ReasonEventWaitCancelled {
		m.cancelSeen = max(m.cancelSeen, m.cancelIssued.Load())
		return nil
	}
	switch ev.Reason {
	case core.ReasonRawRX, core.ReasonRawRxEnd, core.ReasonRawWriteable, core.ReasonTimer, core.ReasonRawClose:
		if m.inApp > 0 {
			// A callback inside another, or inside a posted function or
			// thread timer, would see the state its caller was halfway
			// through changing (CloseWrite in RAW_RX before RAW_RX_END).
			m.problem(nil, "%v of fd %d inside a callback, posted function or thread timer of the model's", ev.Reason, ev.Conn.FD())
		}
	}
	m.inApp++
	defer func() { m.inApp-- }()
	mc, _ := ev.Conn.User().(*modelConn)
	if mc == nil {
		if ev.Reason != core.ReasonRawAdopt { // an accepted one is bound right after
			m.problem(nil, "%v for a connection the model does not know (fd %d)", ev.Reason, ev.Conn.FD())
		}
		return nil
	}
	a := &mc.app
	if a.closed {
		m.problem(mc, "%v after %s", ev.Reason, mc.end())
		return nil
	}
	if (ev.Reason != core.ReasonRawAdopt || mc.kind.client()) && ev.Conn != a.c {
		m.problem(mc, "%v for another Conn than the one adopted (or Connect returned)", ev.Reason)
		return nil
	}
	if ev.Reason == core.ReasonClientConnectionError {
		m.onClientError(mc, ev)
		return nil
	}
	if ev.Reason != core.ReasonRawAdopt {
		m.relayClosing(mc)
	}
	switch ev.Reason {
	case core.ReasonRawAdopt:
		if a.adopted {
			m.problem(mc, "second RAW_ADOPT")
			return nil
		}
		if mc.kind.client() {
			m.clientAdopted(mc, ev.Conn)
		}
		m.adopted(mc, ev.Conn)
	case core.ReasonRawRX:
		return m.onRX(mc, ev.Data)
	case core.ReasonRawRxEnd:
		return m.onRxEnd(mc)
	case core.ReasonRawWriteable:
		return m.onWriteable(mc)
	case core.ReasonTimer:
		return m.onTimer(mc)
	case core.ReasonRawClose:
		m.onClose(mc, ev.Err)
	}
	return nil
}

// end names how the connection ended.
func (mc *modelConn) end() string {
	if mc.app.failed {
		return "CLIENT_CONNECTION_ERROR"
	}
	return "RAW_CLOSE"
}

// clientAdopted checks the RAW_ADOPT of a client connection: one that
// connects to the model's listener, with no Close or Abort while it
// connected, no longer Connecting, on the one fd of its poll-fd callbacks
// left added (the socket whose connect won).
func (m *model) clientAdopted(mc *modelConn, c *core.Conn) {
	a := &mc.app
	switch {
	case mc.kind == kindRefused:
		m.problem(mc, "RAW_ADOPT of a connect to %s, which refuses", m.refuseAddr)
	case !a.connecting:
		m.problem(mc, "RAW_ADOPT of a client connection not connecting")
	case a.closing:
		m.problem(mc, "RAW_ADOPT after Close or Abort while connecting (want CLIENT_CONNECTION_ERROR and nothing else)")
	case c.Connecting() || c.Closed():
		m.problem(mc, "RAW_ADOPT while Connecting says %v, Closed %v", c.Connecting(), c.Closed())
	}
	fd := c.FD()
	if len(a.dialFDs) != 1 || !a.dialFDs[fd] {
		m.problem(mc, "RAW_ADOPT on fd %d, while the fds its poll-fd callbacks added and did not delete are %v", fd, slices.Sorted(maps.Keys(a.dialFDs)))
	}
	if mc.kind == kindRace {
		m.raced++
		if a.dialAdds == 2 {
			m.racedBoth++
		}
	}
	a.connecting, a.dialFDs = false, nil
	m.connected++
	sa, err := unix.Getsockname(fd)
	if sa, ok := sa.(*unix.SockaddrInet4); ok && err == nil {
		mc.local = (&net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}).String()
	} else {
		m.problem(mc, "RAW_ADOPT: the socket's address: %v, %v", sa, err)
	}
}

// onClientError is the model's CLIENT_CONNECTION_ERROR: once, for a client
// connection still connecting, never after RAW_ADOPT; Err says
// ECONNREFUSED for the address that refuses, ErrClosed once the
// application gave up (Close or Abort while connecting). The connection is
// then Closed, not Connecting, holds no fd (FD -1), and its poll-fd
// callbacks deleted every fd they added; nothing more comes for it
// (callback and onPoll check that).
func (m *model) onClientError(mc *modelConn, ev core.Event) {
	a := &mc.app
	c := ev.Conn
	switch {
	case !mc.kind.client():
		m.problem(mc, "CLIENT_CONNECTION_ERROR for a connection the application did not Connect")
	case a.adopted:
		m.problem(mc, "CLIENT_CONNECTION_ERROR after RAW_ADOPT")
	case !a.connecting:
		m.problem(mc, "CLIENT_CONNECTION_ERROR of a client connection not connecting")
	}
	var want error
	switch {
	case a.closing:
		want = core.ErrClosed
	case mc.kind == kindRefused:
		want = syscall.ECONNREFUSED
	default:
		m.problem(mc, "CLIENT_CONNECTION_ERROR (%v) for a connect to the model's listener, not given up", ev.Err)
	}
	if want != nil && !errors.Is(ev.Err, want) {
		m.problem(mc, "CLIENT_CONNECTION_ERROR with Err %v, want %v (Close or Abort while connecting: %v)", ev.Err, want, a.closing)
	}
	if c.Connecting() || !c.Closed() {
		m.problem(mc, "CLIENT_CONNECTION_ERROR while Connecting says %v, Closed %v", c.Connecting(), c.Closed())
	}
	if fd := c.FD(); fd != -1 {
		m.problem(mc, "CLIENT_CONNECTION_ERROR with FD %d, want -1", fd)
	}
	if len(a.dialFDs) > 0 {
		m.problem(mc, "CLIENT_CONNECTION_ERROR while fds %v its poll-fd callbacks added were not deleted", slices.Sorted(maps.Keys(a.dialFDs)))
	}
	if a.closing {
		m.connClosed++
	} else {
		m.refused++
	}
	a.connecting, a.failed, a.closed, a.closeErr = false, true, true, ev.Err
	a.timerPending, a.timeoutPending, a.wantW, a.chunks = false, false, false, nil
}

// popAction pops the first armed action, if any.
func popAction(acts *[]modelAction) (modelAction, bool) {
	if len(*acts) == 0 {
		return modelAction{}, false
	}
	a := (*acts)[0]
	*acts = (*acts)[1:]
	return a, true
}

func (m *model) onRX(mc *modelConn, data []byte) error {
	a := &mc.app
	switch {
	case !a.adopted:
		m.problem(mc, "RAW_RX before RAW_ADOPT")
	case a.closing:
		m.problem(mc, "RAW_RX after Close (nothing but RAW_CLOSE may follow it)")
	case a.paused:
		m.problem(mc, "RAW_RX of %d bytes while rx is paused", len(data))
	case m.cfg.rxChunk > 0 && len(data) > m.cfg.rxChunk:
		m.problem(mc, "RAW_RX of %d bytes, more than Protocol.RxChunk %d", len(data), m.cfg.rxChunk)
	case a.rxEnded:
		m.problem(mc, "RAW_RX of %d bytes after RAW_RX_END", len(data))
	case a.relayTo != nil:
		m.problem(mc, "RAW_RX of %d bytes on the source of a relay to %v", len(data), a.relayTo)
	}
	if a.gap {
		if m.gapRX(mc, data) {
			return nil // given up: aborted
		}
	} else {
		if d := streamDiff(mc.id, toApp, a.received, data); d != "" {
			m.problem(mc, "RAW_RX: %s", d)
		}
		a.received += int64(len(data))
	}
	if act, ok := popAction(&a.onRX); ok {
		return m.apply(mc, act)
	}
	return nil
}

// onRxEnd is the model's RAW_RX_END: only with AllowHalfOpen, once, after
// the peer ended its stream and every byte it sent was delivered, never
// while paused. It does what the next RAW_RX was armed to do.
func (m *model) onRxEnd(mc *modelConn) error {
	a := &mc.app
	// A relay's source: the relay ended with the input, which went to
	// the target's peer.
	m.relayEnded(mc, true)
	if a.relayMaybeDone {
		a.received = a.peerSent
	}
	if a.gap && a.peerEnded {
		m.gapEnd(mc)
	}
	switch {
	case !m.cfg.halfOpen:
		m.problem(mc, "RAW_RX_END without AllowHalfOpen")
	case a.rxEnded:
		m.problem(mc, "a second RAW_RX_END")
	case a.closing:
		m.problem(mc, "RAW_RX_END after Close (nothing but RAW_CLOSE may follow it)")
	case a.paused:
		m.problem(mc, "RAW_RX_END while rx is paused")
	case !a.peerEnded:
		m.problem(mc, "RAW_RX_END, but the peer did not end its stream")
	case a.received != a.peerSent:
		m.problem(mc, "RAW_RX_END after RAW_RX delivered %d of the %d bytes the peer sent", a.received, a.peerSent)
	}
	a.rxEnded = true
	if act, ok := popAction(&a.onRX); ok {
		return m.apply(mc, act)
	}
	return nil
}

func (m *model) onWriteable(mc *modelConn) error {
	a := &mc.app
	switch {
	case a.closing:
		m.problem(mc, "RAW_WRITEABLE after Close")
		return nil
	case a.wrClosed:
		m.problem(mc, "RAW_WRITEABLE after CloseWrite")
		return nil
	case a.relayFrom != nil:
		m.problem(mc, "RAW_WRITEABLE on the target of a relay from %v", a.relayFrom)
		return nil
	case !a.wantW:
		// One per request, as the Writeable test holds every backend to
		// (checklist 2 and 3), although ReasonRawWriteable's doc allows
		// an extra one at any time.
		m.problem(mc, "RAW_WRITEABLE with no CallbackOnWritable awaiting one (never asked, or a second one for one request)")
	}
	a.wantW = false
	if n := a.c.Buffered(); n > 0 {
		m.problem(mc, "RAW_WRITEABLE while the core still holds %d bytes of an earlier Write", n)
	}
	if len(a.chunks) > 0 {
		size := a.chunks[0]
		// In the peer's stream before the kernel has the bytes, which the
		// peer may read at once.
		mc.out.write(mc.id, a.written, int64(size))
		n, err := a.c.Write(streamBytes(mc.id, toPeer, a.written, size))
		if err != nil {
			mc.out.unwrite(int64(size))
		}
		switch {
		case err == nil && n == size:
			a.written += int64(size)
			a.chunks = a.chunks[1:]
			if a.c.Buffered() > 0 {
				m.partial++
			}
		case err != nil && a.peerClosed: // the connection closes when the callback returns
			a.chunks = nil
		default:
			m.problem(mc, "Write of %d bytes in RAW_WRITEABLE returned %d, %v", size, n, err)
			a.chunks = a.chunks[1:]
		}
		_, err = a.c.Write(nil)
		if !errors.Is(err, core.ErrNotWritable) && !errors.Is(err, core.ErrClosed) && !a.wrClosed {
			m.problem(mc, "a second Write in one RAW_WRITEABLE returned %v, want ErrNotWritable", err)
		}
		if len(a.chunks) > 0 {
			m.askWritable(mc) // from inside RAW_WRITEABLE: asks for the next one
		}
	}
	if act, ok := popAction(&a.onWriteable); ok {
		return m.apply(mc, act)
	}
	return nil
}

func (m *model) onTimer(mc *modelConn) error {
	a := &mc.app
	now := time.Now()
	switch {
	case a.closing:
		m.problem(mc, "TIMER after Close")
		return nil
	case !a.timerPending:
		m.problem(mc, "TIMER with no timer pending (cancelled, replaced, or fired already)")
	case now.Before(a.timerAt):
		m.problem(mc, "TIMER %v before its time", a.timerAt.Sub(now))
	}
	a.timerPending = false
	if act, ok := popAction(&a.onTimer); ok {
		return m.apply(mc, act)
	}
	return nil
}

func (m *model) onClose(mc *modelConn, err error) {
	a := &mc.app
	now := time.Now()
	a.closed, a.closeErr = true, err
	m.relaysEnd(mc, err)
	if a.gap && errors.Is(err, io.EOF) && !a.closing && a.peerEnded {
		m.gapEnd(mc) // closed for its peer's end: everything was delivered
	}
	if i := slices.Index(m.aborting, mc); i >= 0 {
		m.aborting = slices.Delete(m.aborting, i, i+1)
	}
	var explained bool
	switch {
	case a.aborted:
		if !errors.Is(err, core.ErrAborted) {
			m.problem(mc, "RAW_CLOSE after Abort with Err %v, want ErrAborted", err)
		}
		explained = true
	case errors.Is(err, core.ErrAborted):
		// Not aborted (or Abort said ErrClosed): the earlier close's
		// reason stands.
		explained = false
	case errors.Is(err, errModelRefused):
		explained = a.errored
	case errors.Is(err, core.ErrDestroyed):
		explained = m.destroying.Load()
	case a.closing:
		// Close promises a nil Err (ErrTimeout once CloseTimeout ran
		// out, which no program waits for). Only the peer's end can
		// make the output it waits to send fail.
		explained = err == nil || a.peerEnded && !errors.Is(err, io.EOF) && !errors.Is(err, core.ErrTimeout) ||
			a.relayHup && errors.Is(err, io.EOF)
	case err == nil:
		// Half open, the application ended its side after RAW_RX_END:
		// both sides are done.
		explained = m.cfg.halfOpen && a.wrClosed && a.rxEnded && !a.wrFirst
	case m.cfg.halfOpen && errors.Is(err, io.EOF):
		// Half open, the peer's end closes only a connection whose
		// application ended its side first, after RAW_RX_END; or, the
		// peer gone (closed), the error its writes or the socket
		// meet, which the core reports as the end it read.
		explained = a.wrClosed && a.wrFirst && a.rxEnded || a.peerClosed
		if !explained && a.peerEnded {
			m.problem(mc, "RAW_CLOSE with %v after the peer's end although AllowHalfOpen keeps it open (CloseWrite %v, RAW_RX_END %v)", err, a.wrClosed, a.rxEnded)
			explained = true
		}
	case errors.Is(err, core.ErrTimeout):
		explained = a.timeoutPending && !a.timeoutLong
		if explained && now.Before(a.timeoutAt) {
			m.problem(mc, "closed by its timeout %v before its time", a.timeoutAt.Sub(now))
		}
	default: // end of stream, a reset, a broken pipe
		explained = a.peerEnded
		// After the peer's orderly end the connection closes once
		// nothing is left: not while the application waits for a
		// RAW_WRITEABLE it asked for to write what it has queued.
		if errors.Is(err, io.EOF) && !a.peerClosed && (a.wantW || len(a.chunks) > 0) {
			m.problem(mc, "RAW_CLOSE with %v after the peer's half-close while the application awaits a RAW_WRITEABLE (asked: %v, %d chunks to write): the peer's end leaves the connection writable until nothing is left", err, a.wantW, len(a.chunks))
		}
	}
	if !explained {
		m.problem(mc, "RAW_CLOSE with Err %v, which nothing the program did explains (Close called %v, callback error %v, timeout pending %v, peer ended %v)",
			err, a.closing, a.errored, a.timeoutPending && !a.timeoutLong, a.peerEnded)
	}
	a.timerPending, a.timeoutPending, a.wantW = false, false, false
}

// bothEnded reports whether both sides of a connection ended: CloseWrite,
// and RAW_RX_END of a half-open one or, without AllowHalfOpen, the peer's
// end. The core closes it, once its output has left and (without
// AllowHalfOpen) its input was delivered (CloseWrite's and RAW_RX_END's
// docs), and from then on, a poll-fd callback of the step that asked for
// the close included, its calls say ErrClosed where they said
// ErrWriteClosed.
func (m *model) bothEnded(a *appEnd) bool {
	return a.wrClosed && (a.rxEnded || !m.cfg.halfOpen && a.peerEnded)
}

// ---- the application: what it does ----

// apply does an action on the loop goroutine; what it returns is for the
// callback of mc to return.
func (m *model) apply(mc *modelConn, act modelAction) error {
	a := &mc.app
	if !a.adopted || a.closed {
		return nil
	}
	switch act.kind {
	case actError:
		a.errored = true
		return errModelRefused
	case actAbort:
		m.abort(mc)
	case actRelay:
		m.relayTo(mc, m.pickTarget(mc, act.to))
	default:
		m.applyOpen(mc, act) // what a connection not adopted yet does too
	}
	return nil
}

// queueWrite has the application write size bytes in a RAW_WRITEABLE to
// come.
func (m *model) queueWrite(mc *modelConn, size int) {
	a := &mc.app
	if mc.kind == kindPipe || a.closed || a.errored || a.noWrite {
		return
	}
	m.relayClosing(mc)
	if a.relayFrom != nil && !a.closing {
		_, err := a.c.Write(nil)
		if m.relayTarget(mc, "Write", err) {
			m.relayTarget(mc, "CallbackOnWritable", a.c.CallbackOnWritable())
			return
		}
	}
	if _, known := mc.out.end(); !known {
		return // after a run of unknown length, nothing can be checked
	}
	if !a.closing && !a.wrClosed {
		a.chunks = append(a.chunks, size)
	}
	m.askWritable(mc)
}

func (m *model) askWritable(mc *modelConn) {
	a := &mc.app
	err := a.c.CallbackOnWritable()
	switch {
	case a.closing:
		if !errors.Is(err, core.ErrClosed) {
			m.problem(mc, "CallbackOnWritable after Close returned %v, want ErrClosed", err)
		}
	case a.wrClosed:
		if !errors.Is(err, core.ErrWriteClosed) && !(errors.Is(err, core.ErrClosed) && (a.peerClosed || m.bothEnded(a))) {
			m.problem(mc, "CallbackOnWritable after CloseWrite returned %v, want ErrWriteClosed", err)
		}
	case err == nil:
		a.wantW = true
	case errors.Is(err, core.ErrClosed) && a.peerClosed:
		a.noWrite, a.chunks = true, nil
	default:
		m.problem(mc, "CallbackOnWritable: %v", err)
	}
}

func (m *model) pause(mc *modelConn) {
	a := &mc.app
	if a.closing || a.closed {
		return
	}
	if err := a.c.RxFlowControl(false); err != nil {
		m.problem(mc, "RxFlowControl(false): %v", err)
		return
	}
	if !a.c.RxPaused() {
		m.problem(mc, "RxPaused false after RxFlowControl(false)")
	}
	a.paused = true
}

func (m *model) resume(mc *modelConn) {
	a := &mc.app
	if a.closing || a.closed {
		return
	}
	a.paused = false
	if err := a.c.RxFlowControl(true); err != nil {
		m.problem(mc, "RxFlowControl(true): %v", err)
	}
}

func (m *model) close(mc *modelConn) {
	a := &mc.app
	if a.closing || a.closed {
		return
	}
	if err := a.c.Close(); err != nil {
		// The core may have asked for the close itself, for what the
		// model learns of later: the peer's end (unless the connection
		// stays half open), its reset, the relay's end.
		endedOpen := m.cfg.halfOpen && !m.bothEnded(a)
		if !errors.Is(err, core.ErrClosed) || !(a.relayMaybeDone || a.peerClosed || a.errored || a.peerEnded && !endedOpen) {
			m.problem(mc, "Close: %v", err)
		}
		return
	}
	// From here on nothing but RAW_CLOSE: a pending TIMER or
	// RAW_WRITEABLE must not come, and what was not written never is.
	a.closing, a.timerPending, a.wantW, a.chunks = true, false, false, nil
	if a.c.Buffered() > 0 {
		m.drains++
		if !a.c.Draining() {
			m.problem(mc, "Close with %d bytes pending does not drain them", a.c.Buffered())
		}
	}
	m.relaysEnd(mc, nil)
}

// closeWrite has the application end its side: nothing more is written,
// and the peer gets what was written before, then end of stream.
func (m *model) closeWrite(mc *modelConn) {
	a := &mc.app
	if a.closing || a.closed {
		return
	}
	m.relayClosing(mc)
	err := a.c.CloseWrite()
	if a.relayFrom != nil && m.relayTarget(mc, "CloseWrite", err) {
		return
	}
	switch {
	case mc.kind == kindPipe:
		if !errors.Is(err, core.ErrInvalid) {
			m.problem(mc, "CloseWrite of a pipe returned %v, want ErrInvalid", err)
		}
	case a.wrClosed:
		if !errors.Is(err, core.ErrWriteClosed) && !(errors.Is(err, core.ErrClosed) && (a.peerClosed || m.bothEnded(a))) {
			m.problem(mc, "a second CloseWrite returned %v, want ErrWriteClosed", err)
		}
	case err == nil:
		a.wrClosed, a.wrFirst, a.wantW, a.chunks = true, !a.rxEnded, false, nil
		m.wrCloses++
	case a.peerClosed && (errors.Is(err, core.ErrClosed) || errors.Is(err, syscall.ECONNRESET)):
		// Reset, or the shutdown met the reset (which the core reports
		// as the reset, not as shutdown(2)'s ENOTCONN): it closes.
		a.noWrite, a.chunks = true, nil
	default:
		m.problem(mc, "CloseWrite: %v", err)
	}
}

// abort has the application abort the connection, dropping what the core
// holds for it: RAW_CLOSE with ErrAborted must follow once the callback,
// posted function or timer that called Abort returns, before anything else
// the loop runs (see checkAborted), and a second Abort says ErrClosed. A
// connection draining after Close is aborted too; one that Close closed
// with nothing left to send, or that the core closes for its peer's end,
// says ErrClosed, and the earlier close's reason stands.
func (m *model) abort(mc *modelConn) {
	a := &mc.app
	if a.closed || a.aborted {
		return
	}
	draining := a.c.Draining()
	err := a.c.Abort()
	switch {
	case err == nil:
		if a.closing && !draining {
			m.problem(mc, "Abort after a Close that had nothing left to send returned nil, want ErrClosed")
		}
		if again := a.c.Abort(); !errors.Is(again, core.ErrClosed) {
			m.problem(mc, "a second Abort returned %v, want ErrClosed", again)
		}
		m.aborts++
		if draining {
			m.abortsDr++
		}
		// A unix socket's peer reads end of stream (SO_LINGER resets
		// only TCP), and one that got a FIN first reads that.
		tcp := mc.kind.tcp()
		a.resetDue = tcp && !a.wrClosed && !(a.closing && m.cfg.graceful)
		a.aborted, a.closing, a.timerPending, a.timeoutPending, a.wantW, a.chunks = true, true, false, false, false, nil
		m.aborting = append(m.aborting, mc)
		m.relaysEnd(mc, nil)
	case errors.Is(err, core.ErrClosed) && (a.closing && !draining || a.peerEnded):
		// Closed by a Close inside this callback, or for the peer's end
		// (or a write that met its reset) the core saw.
		m.abortsCl++
	default:
		m.problem(mc, "Abort returned %v (Close called %v, draining %v, the peer ended %v)", err, a.closing, draining, a.peerEnded)
	}
}

// checkAborted reports connections Abort closed whose RAW_CLOSE did not
// come before what the loop runs next (what).
func (m *model) checkAborted(what string) {
	for _, mc := range m.aborting {
		m.problem(mc, "%s ran before the RAW_CLOSE that must follow Abort as soon as the callback that called it returns", what)
	}
	m.aborting = m.aborting[:0]
}

func (m *model) setTimer(mc *modelConn, d time.Duration) {
	a := &mc.app
	if a.closing || a.closed {
		return
	}
	at := time.Now().Add(d)
	if err := a.c.SetTimer(d); err != nil {
		m.problem(mc, "SetTimer: %v", err)
		return
	}
	a.timerPending, a.timerAt, a.timerLong = true, at, d >= time.Hour
}

func (m *model) cancelTimer(mc *modelConn) {
	a := &mc.app
	if a.closing || a.closed {
		return
	}
	if err := a.c.CancelTimer(); err != nil {
		m.problem(mc, "CancelTimer: %v", err)
	}
	a.timerPending = false
}

func (m *model) setTimeout(mc *modelConn, d time.Duration) {
	a := &mc.app
	if a.closing || a.closed {
		return
	}
	at := time.Now().Add(d)
	if err := a.c.SetTimeout(d); err != nil {
		m.problem(mc, "SetTimeout(%v): %v", d, err)
		return
	}
	a.timeoutPending, a.timeoutAt, a.timeoutLong = d > 0, at, d >= time.Hour
}

// threadTimer schedules thread timer j (AfterFunc the first time, Reset
// after), to do act on mc when it fires.
func (m *model) threadTimer(j int, d time.Duration, act *modelAction, mc *modelConn) {
	tt := &m.timers[j]
	at := time.Now().Add(d)
	var err error
	if tt.tm == nil {
		tt.tm, err = m.h.th.AfterFunc(d, func() {
			m.inApp++
			m.threadTimerFired(j)
			m.inApp--
		})
	} else {
		err = tt.tm.Reset(d)
	}
	if err != nil {
		m.problem(nil, "thread timer %d: %v", j, err)
		return
	}
	tt.pending, tt.at, tt.long, tt.act, tt.conn = true, at, d >= time.Hour, act, mc
}

func (m *model) threadTimerFired(j int) {
	m.checkAborted(fmt.Sprintf("thread timer %d", j))
	tt := &m.timers[j]
	now := time.Now()
	switch {
	case !tt.pending:
		m.problem(nil, "thread timer %d fired while not pending (stopped, or fired already)", j)
		return
	case now.Before(tt.at):
		m.problem(nil, "thread timer %d fired %v before its time", j, tt.at.Sub(now))
	}
	tt.pending = false
	if act, mc := tt.act, tt.conn; act != nil {
		tt.act, tt.conn = nil, nil
		if act.kind == actError { // no callback to return it from
			act.kind = actClose
		}
		m.apply(mc, *act)
	}
}

func (m *model) stopThreadTimer(j int) {
	tt := &m.timers[j]
	if tt.tm == nil {
		return
	}
	if was, err := tt.tm.Stop(); was != tt.pending || err != nil {
		m.problem(nil, "thread timer %d: Stop reported %v, %v, but the timer was pending=%v", j, was, err, tt.pending)
	}
	tt.pending, tt.act, tt.conn = false, nil, nil
}

// ---- the peer ----

// pump writes what the peer has queued, as far as the kernel takes it.
func (m *model) pump(mc *modelConn) {
	p := &mc.peer
	for p.fd >= 0 && !p.shut && p.wrote < p.queued {
		n := int(min(p.queued-p.wrote, maxStreamRun))
		mc.peerMax.Store(p.wrote + int64(n))
		w, err := unix.Write(p.fd, streamBytes(mc.id, toApp, p.wrote, n))
		if w > 0 {
			p.wrote += int64(w)
		}
		mc.peerMax.Store(p.wrote)
		switch {
		case err == nil, errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			return
		default: // the core closed its end
			p.shut, p.queued, p.wrErr = true, p.wrote, true
			m.peerSawEnd(mc, "writing", err)
			return
		}
	}
}

// receive reads what arrived for the peer, at most limit bytes (< 0: all),
// checking every byte.
func (m *model) receive(mc *modelConn, limit int64) {
	p := &mc.peer
	if mc.kind == kindPipe {
		return
	}
	for got := int64(0); p.fd >= 0 && !p.eof && (limit < 0 || got < limit); {
		buf := m.rbuf
		if limit >= 0 {
			buf = buf[:min(int64(len(buf)), limit-got)]
		}
		n, err := unix.Read(p.fd, buf)
		switch {
		case n > 0:
			if d := mc.out.diff(p.read, buf[:n]); d != "" {
				m.fatalf("%v: the peer received wrong bytes: %s", mc, d)
			}
			p.read += int64(n)
			got += int64(n)
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			return
		default:
			p.eof = true
			if err == nil {
				err = io.EOF
			}
			m.peerSawEnd(mc, "reading", err)
			return
		}
	}
}

// peerSawEnd checks that the peer saw the stream end only once the core
// closed its end (RAW_CLOSE comes before the close), or, with
// GracefulClose, shut its write side after Close.
//
// After CloseWrite the peer reads every byte written before it, then end
// of stream, while the connection stays open; unless a close that drops
// what the core held (a callback's error, a timeout) came first.
//
// The peer of a TCP connection that Abort closed reads an error (a
// reset), not an end of stream that would pass a cut-off stream for a
// whole one; unless the core sent a FIN first (CloseWrite, GracefulClose),
// or a failed write of the peer took the error.
func (m *model) peerSawEnd(mc *modelConn, op string, err error) {
	var closed, closing, wrClosed, resetDue bool
	var written int64
	var known bool
	var closeErr error
	m.do(func() {
		a := &mc.app
		closed, closing, wrClosed, closeErr, resetDue = a.closed, a.closing, a.wrClosed, a.closeErr, a.resetDue
		written, known = mc.out.end()
	})
	if resetDue && op == "reading" && errors.Is(err, io.EOF) && !mc.peer.wrErr {
		m.fatalf("%v: the peer read end of stream after Abort (having read %d of the %d bytes written), not the error of a reset", mc, mc.peer.read, written)
	}
	if resetDue && op == "reading" {
		m.resets++
	}
	if wrClosed && op == "reading" && errors.Is(err, io.EOF) {
		// Close with input unread resets a TCP connection, which may drop
		// what the peer had not read yet, and the error may have gone to
		// the peer's write (see peerEnd.wrErr): only GracefulClose, or a
		// unix socket, keeps the stream whole then.
		lossy := closing && !m.cfg.graceful && mc.kind != kindUnix
		whole := !closed || errors.Is(closeErr, io.EOF) || closeErr == nil && !lossy
		if whole && known && mc.peer.read != written {
			m.fatalf("%v: the peer got end of stream after CloseWrite having read %d of the %d bytes written before it", mc, mc.peer.read, written)
		}
		return
	}
	if !closed && !(closing && m.cfg.graceful && op == "reading") {
		m.fatalf("%v: the peer got %v %s, but the connection is open (Close called: %v)", mc, err, op, closing)
	}
}

// peerEnds tells the application, before the peer does it, that the
// peer ends its stream (closed: and its descriptor): from then on the
// connection may close for it.
func (m *model) peerEnds(mc *modelConn, closed bool) {
	sent := mc.peer.wrote
	m.do(func() {
		a := &mc.app
		if !a.peerEnded {
			a.peerSent = sent
		}
		a.peerEnded, a.peerClosed = true, a.peerClosed || closed
	})
}

func (m *model) peerCloseWrite(mc *modelConn) {
	p := &mc.peer
	if p.fd < 0 || p.shut {
		return
	}
	m.peerEnds(mc, false)
	p.shut, p.queued = true, p.wrote
	if mc.kind == kindPipe { // a pipe's write end has nothing else to do
		require.NoError(m.t, unix.Close(p.fd))
		p.fd, p.eof = -1, true
		return
	}
	if err := unix.Shutdown(p.fd, unix.SHUT_WR); err != nil && !errors.Is(err, unix.ENOTCONN) {
		m.fatalf("%v: the peer's shutdown: %v", mc, err)
	}
}

func (m *model) peerClose(mc *modelConn) {
	p := &mc.peer
	if p.fd < 0 {
		return
	}
	m.peerEnds(mc, true)
	require.NoError(m.t, unix.Close(p.fd))
	p.fd, p.shut, p.eof, p.closed, p.queued = -1, true, true, true, p.wrote
}

// ---- waiting ----

// appView is what the test goroutine learns of a connection's
// application side.
type appView struct {
	received int64
	// What the peer is to receive, written and relayed, if known (outOK):
	// not while a relay to it lasts, nor after one dropped bytes.
	written           int64
	outOK             bool
	relayed           *modelConn // the source of a relay to it
	relayAt, relayOff int64      // where that relay's run starts in the peer's stream and the source's
	relaying          *modelConn // the target of its relay
	chunks            int
	closed, closing   bool
	closeErr          error
	timer, timeout    bool // a short one is pending
	errored, noWrite  bool
	wrClosed, rxEnded bool
	gap               bool // received is not known yet (see resumeSource)
}

func (m *model) view(mc *modelConn) appView {
	a := &mc.app
	written, outOK := mc.out.end()
	relayAt, relayOff, _ := mc.out.open()
	return appView{received: a.received, written: written, outOK: outOK,
		relayed: a.relayFrom, relayAt: relayAt, relayOff: relayOff, relaying: a.relayTo, chunks: len(a.chunks),
		closed: a.closed, closing: a.closing, closeErr: a.closeErr,
		timer: a.timerPending && !a.timerLong, timeout: a.timeoutPending && !a.timeoutLong,
		errored: a.errored, noWrite: a.noWrite, wrClosed: a.wrClosed, rxEnded: a.rxEnded, gap: a.gap}
}

// waitPeers waits until one of the peers of mcs has something to read or
// room to write what it queued, or a millisecond passed: the loop's
// progress (timers, callbacks) shows only in the model's state, which the
// caller looks at again.
func (m *model) waitPeers(mcs []*modelConn, write bool) {
	var fds []unix.PollFd
	var of []*modelConn
	for _, mc := range mcs {
		p := &mc.peer
		if p.fd < 0 || p.quiet {
			continue
		}
		var ev int16
		if mc.kind != kindPipe && !p.eof {
			ev |= unix.POLLIN
		}
		if write && !p.shut && p.wrote < p.queued {
			ev |= unix.POLLOUT
		}
		if ev != 0 {
			fds = append(fds, unix.PollFd{Fd: int32(p.fd), Events: ev})
			of = append(of, mc)
		}
	}
	if _, err := unix.Poll(fds, 1); err != nil && !errors.Is(err, unix.EINTR) {
		m.fatalf("poll: %v", err)
	}
	for i, pfd := range fds {
		// A pipe's write end reports its reader gone for good; with
		// nothing to write it would end every wait at once.
		if pfd.Revents&(unix.POLLERR|unix.POLLHUP) != 0 && of[i].kind == kindPipe && pfd.Events&unix.POLLOUT == 0 {
			of[i].peer.quiet = true
		}
	}
}

// waitFor serves the peers of mcs (reading, and writing if write) until
// cond says it is done; otherwise cond says what it waits for.
func (m *model) waitFor(mcs []*modelConn, write bool, cond func() (bool, string)) {
	m.t.Helper()
	deadline := time.Now().Add(m.guard)
	for {
		for _, mc := range mcs {
			if write {
				m.pump(mc)
			}
			m.receive(mc, -1)
		}
		done, what := cond()
		if done {
			return
		}
		if time.Now().After(deadline) {
			m.fatalf("still waiting for %s after %v (hang guard)", what, m.guard)
		}
		m.waitPeers(mcs, write)
	}
}

// drain has the peer read until it got everything the application has
// queued for it so far, unless the connection closes first.
func (m *model) drain(mc *modelConn) {
	if mc.kind == kindPipe || mc.peer.fd < 0 || mc.peer.eof {
		return
	}
	m.waitFor([]*modelConn{mc}, false, func() (bool, string) {
		var v appView
		m.do(func() { v = m.view(mc) })
		// The stream ends, and the rest may never come. A peer that
		// only half-closed its own gets it all before the end.
		if v.closed || v.closing || v.errored || v.noWrite || mc.peer.eof {
			return true, ""
		}
		return v.chunks == 0 && (!v.outOK || mc.peer.read == v.written),
			fmt.Sprintf("%v: the peer to receive the %d bytes written and %d chunks queued (it has %d)", mc, v.written, v.chunks, mc.peer.read)
	})
}

// ---- a step ----

type modelOp uint8

const (
	opPeerWrite modelOp = iota
	opPeerRead
	opPeerReadAll
	opPeerDrain
	opAppWrite
	opArmRX
	opArmWriteable
	opArmTimer
	opPause
	opResume
	opConnTimer
	opConnTimerCancel
	opTimeout
	opThreadTimer
	opThreadTimerStop
	opCancelService
	opAppClose
	opPeerCloseWrite
	opPeerClose
	opReopen
	opSync
	opAppCloseWrite
	opAppAbort
	opRelay
	opArmPoll
	numOps
)

// modelOps maps a step's first byte to its operation: the table holds
// each operation as often as it should be picked.
var modelOps = weighted[modelOp]([]int{
	opPeerWrite: 14, opPeerRead: 6, opPeerReadAll: 4, opPeerDrain: 2, opAppWrite: 12,
	opArmRX: 8, opArmWriteable: 5, opArmTimer: 3, opPause: 6, opResume: 6,
	opConnTimer: 4, opConnTimerCancel: 2, opTimeout: 2, opThreadTimer: 5, opThreadTimerStop: 2,
	opCancelService: 3, opAppClose: 1, opPeerCloseWrite: 3, opPeerClose: 1, opReopen: 4, opSync: 3,
	opAppCloseWrite: 2, opAppAbort: 1, opRelay: 14, opArmPoll: 6,
})

func (m *model) run(n int, st modelStep) {
	mc := m.slots[int(st.conn)%len(m.slots)]
	a, b := st.a, st.b
	switch modelOps[int(st.op)%len(modelOps)] {
	case opPeerWrite:
		size := chunkSize(a, b)
		m.note("peer writes %d B to %v", size, mc)
		if mc.peer.fd >= 0 && !mc.peer.shut {
			mc.peer.queued += int64(size)
			m.pump(mc)
		}
	case opPeerRead:
		size := chunkSize(a, b)
		m.note("peer reads up to %d B of %v", size, mc)
		m.receive(mc, int64(size))
	case opPeerReadAll:
		m.note("peer reads all it has of %v", mc)
		m.receive(mc, -1)
	case opPeerDrain:
		m.note("peer reads until it has all %v wrote", mc)
		m.drain(mc)
	case opAppWrite:
		size := chunkSize(a, b)
		m.note("post: %v writes %d B", mc, size)
		m.do(func() { m.queueWrite(mc, size) })
	case opArmRX:
		act := decodeAction(a, b)
		m.note("%v: %v in its next RAW_RX", mc, act)
		m.do(func() { mc.app.onRX = append(mc.app.onRX, act) })
	case opArmWriteable:
		act := decodeAction(a, b)
		m.note("%v: %v in its next RAW_WRITEABLE", mc, act)
		m.do(func() { mc.app.onWriteable = append(mc.app.onWriteable, act) })
	case opArmTimer:
		act := decodeAction(a, b)
		m.note("%v: %v in its next TIMER", mc, act)
		m.do(func() { mc.app.onTimer = append(mc.app.onTimer, act) })
	case opPause:
		m.note("post: %v pauses rx", mc)
		m.do(func() { m.ifAdopted(mc, m.pause) })
	case opResume:
		m.note("post: %v resumes rx", mc)
		m.do(func() { m.ifAdopted(mc, m.resume) })
	case opConnTimer:
		d := modelDelay(a)
		m.note("post: %v SetTimer(%v)", mc, d)
		m.do(func() { m.ifAdopted(mc, func(mc *modelConn) { m.setTimer(mc, d) }) })
	case opConnTimerCancel:
		m.note("post: %v CancelTimer", mc)
		m.do(func() { m.ifAdopted(mc, m.cancelTimer) })
	case opTimeout:
		// Mostly none or an hour: a timeout that expires ends the
		// connection.
		d := [...]time.Duration{0, 0, 0, time.Hour, time.Hour, time.Hour, time.Millisecond, 3 * time.Millisecond}[a%8]
		m.note("post: %v SetTimeout(%v)", mc, d)
		m.do(func() { m.ifAdopted(mc, func(mc *modelConn) { m.setTimeout(mc, d) }) })
	case opThreadTimer:
		j, d := int(a)%modelTimers, modelDelay(a>>2)
		var act *modelAction
		if b&3 != 0 {
			x := decodeAction(b>>2, a)
			act = &x
		}
		what := "nothing"
		if act != nil {
			what = act.String()
		}
		m.note("post: thread timer %d in %v, then %s on %v", j, d, what, mc)
		m.do(func() { m.threadTimer(j, d, act, mc) })
	case opThreadTimerStop:
		j := int(a) % modelTimers
		m.note("post: thread timer %d Stop", j)
		m.do(func() { m.stopThreadTimer(j) })
	case opCancelService:
		m.note("CancelService")
		m.cancelIssued.Add(1) // before: a delivery that counts it may start at once
		if err := m.h.ctx.CancelService(); err != nil {
			m.fatalf("CancelService: %v", err)
		}
	case opAppClose:
		m.note("post: %v Close", mc)
		m.do(func() { m.ifAdopted(mc, m.close) })
	case opPeerCloseWrite:
		m.note("peer half-closes %v", mc)
		m.peerCloseWrite(mc)
	case opPeerClose:
		m.note("peer closes %v", mc)
		m.peerClose(mc)
	case opReopen:
		var v appView
		m.do(func() { v = m.view(mc) })
		if !v.closed && !v.closing && !v.timeout {
			m.note("reopen slot %d: %v is open", mc.slot, mc)
			return
		}
		m.note("reopen slot %d: %v is closed or closing", mc.slot, mc)
		m.retire(mc)
		kind := m.s.kindOf(a)
		m.open(mc.slot, kind, b, openAction(kind, a>>2, b, st.conn))
	case opSync:
		m.note("sync")
		m.h.sync()
	case opAppCloseWrite:
		m.note("post: %v CloseWrite", mc)
		m.do(func() { m.ifAdopted(mc, m.closeWrite) })
	case opAppAbort:
		// A quarter Close first, so that Abort meets connections
		// draining (or closed by Close, when nothing was left).
		if a%4 == 0 {
			m.note("post: %v Close, then Abort", mc)
			m.do(func() {
				m.ifAdopted(mc, func(mc *modelConn) {
					m.close(mc)
					m.abort(mc)
				})
			})
			return
		}
		m.note("post: %v Abort", mc)
		m.do(func() { m.ifAdopted(mc, m.abort) })
	case opArmPoll:
		act := decodePollAction(a, b, pollReasons[int(st.conn>>4)%len(pollReasons)])
		m.note("%v: %v in its next %v not inside a call of the model's", mc, act, act.poll)
		m.do(func() { mc.app.onPoll = append(mc.app.onPoll, act) })
	case opRelay:
		m.note("post: %v RelayTo another connection (%d)", mc, a)
		m.do(func() {
			m.ifAdopted(mc, func(mc *modelConn) {
				to := m.pickTarget(mc, a)
				m.note("post: %v RelayTo %v", mc, to)
				m.relayTo(mc, to)
			})
		})
	}
}

func (m *model) ifAdopted(mc *modelConn, f func(*modelConn)) {
	if mc.app.adopted && !mc.app.closed {
		f(mc)
	}
}

// ---- the end ----

// finished checks what a closed connection's peer got, once it read to
// the end, and reports whether it did.
func (m *model) finished(mc *modelConn, v appView) (bool, string) {
	p := &mc.peer
	if v.received != p.wrote && errors.Is(v.closeErr, io.EOF) && !v.closing && !v.gap {
		// Closed for the peer's end of stream: everything before it
		// was delivered (input kept while paused first, on resume).
		m.fatalf("%v closed with %v after RAW_RX delivered %d of the %d bytes the peer wrote", mc, v.closeErr, v.received, p.wrote)
	}
	if mc.kind != kindPipe && p.fd >= 0 && !p.eof {
		return false, fmt.Sprintf("%v, closed with %v: the peer to read to the end of the stream", mc, v.closeErr)
	}
	// Closed for the peer's orderly end: only once nothing was left, so a
	// peer that still reads got every byte written, and no chunk waited.
	if errors.Is(v.closeErr, io.EOF) && !v.closing && !p.closed && (v.outOK && p.read != v.written || v.chunks > 0) {
		m.fatalf("%v closed with %v after the peer's half-close: the peer received %d of the %d bytes written, %d chunks still queued", mc, v.closeErr, p.read, v.written, v.chunks)
	}
	// Conn.Close sends what was written before it closes. A TCP socket
	// closed with input it did not read resets the connection (RFC 1122
	// 4.2.2.13), which may drop what the kernel still held: the stream
	// is then only known whole with GracefulClose, which waits for the
	// peer's end of stream. A peer that closed receives nothing more.
	whole := v.closeErr == nil && (m.cfg.graceful || mc.kind == kindUnix) && !p.closed
	if whole && v.outOK && p.read != v.written {
		m.fatalf("%v closed by Close: the peer received %d of the %d bytes written before it", mc, p.read, v.written)
	}
	return true, ""
}

// retire waits for a connection that is closing to close, checks it to
// the end and closes its peer.
func (m *model) retire(mc *modelConn) {
	var v appView
	m.waitFor([]*modelConn{mc}, false, func() (bool, string) {
		m.do(func() { v = m.view(mc) })
		if !v.closed {
			return false, m.closing(mc, v)
		}
		return m.finished(mc, v)
	})
	if mc.peer.fd >= 0 {
		require.NoError(m.t, unix.Close(mc.peer.fd))
		mc.peer.fd = -1
	}
}

// closing has the peer of a connection that is closing (Close, or a
// timeout due) do what the close waits for, and says what that is.
func (m *model) closing(mc *modelConn, v appView) string {
	p := &mc.peer
	if !v.closing {
		return fmt.Sprintf("%v: its timeout to close it", mc)
	}
	// With GracefulClose the close waits for the peer's end of stream,
	// which the peer sends once it read the app's (a pipe's writer has
	// nothing to read).
	if m.cfg.graceful && (p.eof || mc.kind == kindPipe) && !p.shut {
		m.peerCloseWrite(mc)
	}
	return fmt.Sprintf("%v: RAW_CLOSE after Close (the peer read %d of %d bytes)", mc, p.read, v.written)
}

// settle ends a program: with nothing armed any more and every
// connection resumed, each either closes (Close, a timeout, the peer's
// end) and its peer reads to the end, or carries every byte both ways;
// every short timer fires and CancelService is answered.
func (m *model) settle() {
	m.note("settle")
	m.do(func() {
		for _, mc := range m.slots {
			a := &mc.app
			a.onRX, a.onWriteable, a.onTimer, a.onPoll = nil, nil, nil, nil
			if a.paused {
				m.resume(mc)
			}
		}
		for j := range m.timers {
			m.timers[j].act = nil
		}
	})
	m.waitFor(m.slots, true, func() (bool, string) {
		views := make([]appView, len(m.slots))
		var timers []int
		var cancelSeen int64
		m.do(func() {
			for i, mc := range m.slots {
				views[i] = m.view(mc)
			}
			for j, tt := range m.timers {
				if tt.pending && !tt.long {
					timers = append(timers, j)
				}
			}
			cancelSeen = m.cancelSeen
		})
		// Every connection gets its turn: one may wait for an action another's
		// case takes (a relay's target whose peer closed has the model Close
		// its source, whose own case waits on that relay meanwhile).
		var waiting string
		for i, mc := range m.slots {
			if what := m.settleConn(mc, views, views[i]); what != "" && waiting == "" {
				waiting = what
			}
		}
		if waiting != "" {
			return false, waiting
		}
		if len(timers) > 0 {
			return false, fmt.Sprintf("thread timers %v to fire", timers)
		}
		if n := m.cancelIssued.Load(); cancelSeen < n {
			return false, fmt.Sprintf("EVENT_WAIT_CANCELLED after CancelService call %d (seen up to %d)", n, cancelSeen)
		}
		return true, ""
	})
}

// settleConn is settle's look at one connection (v, its view among
// views): what it still waits for, taking the steps that end it where the
// application must; "" once it is done.
func (m *model) settleConn(mc *modelConn, views []appView, v appView) string {
	p := &mc.peer
	if dst := v.relaying; dst != nil {
		// Its input goes to the target's peer: received
		// there, it counts as received.
		dv := views[slices.Index(m.slots, dst)]
		v.received = dv.relayOff + max(0, dst.peer.read-dv.relayAt)
	}
	switch {
	case v.closed:
		if done, what := m.finished(mc, v); !done {
			return what
		}
	case v.closing, v.timeout:
		return m.closing(mc, v)
	case p.shut && v.relayed != nil:
		// The peer ended its stream, and the application can end
		// its side only once the relay to it ended: the source's
		// end ends it, or else, all passed on, its Close.
		src := v.relayed
		sp := &src.peer
		switch {
		case !sp.shut && sp.wrote == sp.queued && v.relayOff+p.read-v.relayAt == sp.wrote:
			m.note("settle: %v, its peer ended, got all relayed from %v: Close the source", mc, src)
			m.do(func() { m.ifAdopted(src, m.close) })
		case p.closed && !sp.shut && sp.wrote == sp.queued:
			// Its peer closed: it gets nothing more, and a relay
			// that sent all it took before the close writes no
			// more to meet the reset. A proxy closes the source.
			m.note("settle: %v, its peer closed, relayed to from %v: Close the source", mc, src)
			m.do(func() { m.ifAdopted(src, m.close) })
		}
		return fmt.Sprintf("%v: its peer ended its stream: the relay from %v to end (the peer got %d of its bytes, its peer wrote %d)", mc, src, p.read-v.relayAt, sp.wrote-v.relayOff)
	case p.shut && m.cfg.halfOpen && v.rxEnded && !v.wrClosed && (p.closed || v.noWrite || v.chunks == 0 && (!v.outOK || p.read >= v.written)):
		// Half open, it stays open until the application ends
		// it: by Close, or by CloseWrite (not a pipe's, which
		// has no write side), both sides then being done.
		m.note("settle: %v, half open, answered: the application ends it", mc)
		m.do(func() {
			if mc.id%2 == 0 && mc.kind != kindPipe {
				m.closeWrite(mc)
			} else {
				m.close(mc)
			}
		})
		return fmt.Sprintf("%v: RAW_CLOSE after the application ended it, half open", mc)
	case p.shut && m.cfg.halfOpen && v.rxEnded:
		return fmt.Sprintf("%v: half open, the peer to receive every byte written (written %d, %d chunks queued, the peer read %d) or RAW_CLOSE", mc, v.written, v.chunks, p.read)
	case p.shut && m.cfg.halfOpen:
		return fmt.Sprintf("%v: RAW_RX_END after the peer ended its stream (RAW_RX delivered %d of %d bytes)", mc, v.received, p.wrote)
	case p.shut:
		return fmt.Sprintf("%v: RAW_CLOSE after the peer ended its stream (RAW_RX delivered %d of %d bytes)", mc, v.received, p.wrote)
	case v.wrClosed && mc.kind != kindPipe && !p.eof:
		return fmt.Sprintf("%v: the peer to read to the end of the stream after CloseWrite (written %d, the peer read %d)", mc, v.written, p.read)
	case v.gap:
		// A source resumed after its relay's target ended learns
		// where its input resumed from its next bytes: the peer
		// sends some more (the relay may have dropped all it sent).
		if p.wrote == p.queued {
			p.queued += 64
		}
		return fmt.Sprintf("%v: RAW_RX after its relay's target ended (the peer wrote %d of %d)", mc, p.wrote, p.queued)
	case p.wrote < p.queued || v.received < p.wrote:
		return fmt.Sprintf("%v: RAW_RX of every byte the peer sent (the peer wrote %d of %d, RAW_RX delivered %d)", mc, p.wrote, p.queued, v.received)
	case mc.kind != kindPipe && (v.chunks > 0 || v.outOK && p.read < v.written):
		return fmt.Sprintf("%v: the peer to receive every byte written (written %d, %d chunks queued, the peer read %d)", mc, v.written, v.chunks, p.read)
	case v.timer:
		return fmt.Sprintf("%v: its TIMER", mc)
	}
	return ""
}

// finish stops the timers that never fire, destroys the context and checks
// what must hold at the end.
func (m *model) finish() {
	m.do(func() {
		for j := range m.timers {
			m.stopThreadTimer(j)
		}
	})
	// Callbacks run on the loop's goroutine; those of the destruction may
	// run on Destroy's (it completes there when no goroutine services
	// the context, as the application's loop in foreign mode).
	events := m.h.rec.snapshot()
	m.destroying.Store(true)
	m.h.destroy()
	for _, mc := range m.all {
		if !mc.app.closed {
			m.fatalf("%v: no RAW_CLOSE by the end of the context", mc)
		}
	}
	if len(m.problems) > 0 {
		m.fatalf("%s", strings.Join(m.problems, "\n  "))
	}
	m.closePeers()
	if m.s.oneGoroutine() {
		for _, e := range events {
			if e.reason != core.ReasonProtocolInit && !isPollReason(e.reason) && e.g != m.h.runG.Load() {
				m.fatalf("%v ran on goroutine %d, not on the loop's (%d)", e, e.g, m.h.runG.Load())
			}
		}
	}
	m.h.rec.mu.Lock()
	probs := append([]string(nil), m.h.rec.problems...)
	m.h.rec.mu.Unlock()
	if len(probs) > 0 {
		m.fatalf("%s", strings.Join(probs, "\n  "))
	}
	var in, out int64
	for _, mc := range m.all {
		in, out = in+mc.app.received, out+mc.peer.read
	}
	count := func(r core.Reason) int { return m.h.rec.count(is(r, nil)) }
	what := m.what
	if what == "" {
		what = fmt.Sprintf("program of %d bytes", len(m.prog))
	}
	m.t.Logf("conformance: model %s: %d steps, %d connections, %d bytes to the app in %d RAW_RX, %d to the peers in %d RAW_WRITEABLE (%d partial writes, %d closes draining), %d TIMER, %d EVENT_WAIT_CANCELLED, %d CloseWrite, %d RAW_RX_END, %d Abort (%d draining, %d ErrClosed, %d resets read), %d RelayTo (%d from a source whose peer ended, %d ended with the input, %d by the target's end, %d sources resumed after it (%d found where their input resumed, %d of them from the socket, %d not; at most %d bytes between a run's last byte its target's peer had and the resumed input); %d bad inputs, %d target calls refused); in poll-fd callbacks %d actions in ADD_POLL_FD, %d in CHANGE_MODE_POLL_FD, %d in DEL_POLL_FD, %d in LOCK_POLL or UNLOCK_POLL (%d of a connection closing), %d waited (nested in a call of the model's); %d Connect (%d established, %d of them racing a refused address (%d with two attempts added), %d refused, %d given up while connecting; %d peers of connects given up accepted)",
		what, m.nsteps, len(m.all), in, count(core.ReasonRawRX), out, count(core.ReasonRawWriteable), m.partial, m.drains,
		count(core.ReasonTimer), count(core.ReasonEventWaitCancelled), m.wrCloses, count(core.ReasonRawRxEnd), m.aborts, m.abortsDr, m.abortsCl, m.resets, m.relays, m.relaysEnded, m.relayDone, m.relayGone, m.resumed, m.gapsResolved, m.gapsExact, m.gapUnknown, m.gapDropped, m.relayBad, m.relayRefused,
		m.pollActs[core.ReasonAddPollFD], m.pollActs[core.ReasonChangeModePollFD], m.pollActs[core.ReasonDelPollFD], m.pollActs[core.ReasonLockPoll]+m.pollActs[core.ReasonUnlockPoll], m.pollClosed, m.pollNest,
		m.connects, m.connected, m.raced, m.racedBoth, m.refused, m.connClosed, m.strays)
}

// adopt runs an adoption from a posted function as the core's own step: the
// model acts in the connection's ADD_POLL_FD, nested in it.
func (m *model) adopt(f func() (*core.Conn, error)) (*core.Conn, error) {
	m.inApp--
	defer func() { m.inApp++ }()
	return f()
}
