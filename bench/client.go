//go:build unix

package main

// The load-generator side: it starts a server child, drives it with closed
// loop ping-pong connections and collects the child's figures.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plugloop/plugloop/evlib"
)

// controlTimeout bounds every exchange with a child.
const controlTimeout = 10 * time.Second

// child is a running server child process.
type child struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan []byte // the child's stdout, line by line
	stderr *tailBuffer
	hello  hello
	done   chan struct{} // closed once Wait returned
	mono0  int64         // a -target's window start (monoNS)
}

// spawn re-executes the bench binary as the named server, optionally under
// strace writing its summary to straceOut, and waits for its hello.
func spawn(ctx context.Context, cfg *config, name, straceOut string) (*child, error) {
	return spawnEnv(ctx, cfg, name, straceOut, nil)
}

// spawnEnv is spawn with more environment for the child (the relay
// scenario's proxies learn their upstream so).
func spawnEnv(ctx context.Context, cfg *config, name, straceOut string, env []string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if straceOut != "" {
		cmd = exec.Command(cfg.stracePath, "-c", "-f", "-o", straceOut, exe)
	} else {
		cmd = exec.Command(exe)
	}
	cmd.Env = append(childEnviron(name, cfg.serverCPUs), env...)
	if cfg.profileDir != "" && straceOut == "" {
		cmd.Env = append(cmd.Env, childProfileEnv+"="+filepath.Join(cfg.profileDir, strings.ReplaceAll(name, "/", "-")+".pprof"))
	}
	cmd.SysProcAttr = childSysProcAttr()
	cmd.WaitDelay = 2 * time.Second
	c := &child{name: name, cmd: cmd, lines: make(chan []byte, 4), stderr: &tailBuffer{max: 4 << 10}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	// A pipe of our own rather than StdoutPipe, so Wait and the reader
	// do not race.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	go func() {
		defer r.Close()
		defer close(c.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			c.lines <- bytes.Clone(sc.Bytes())
		}
	}()
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	if err := c.receive(ctx, &c.hello); err != nil {
		c.kill()
		return nil, err
	}
	if c.hello.Error != "" {
		c.kill()
		return nil, errors.New(c.hello.Error)
	}
	return c, nil
}

// startChild starts a server child (under strace, writing its summary to
// straceOut, if that is set), or stands for the -target.
func startChild(ctx context.Context, cfg *config, name, straceOut string) (*child, error) {
	if name == targetName {
		return targetChild(cfg.target), nil
	}
	return spawn(ctx, cfg, name, straceOut)
}

// childEnviron is the bench's environment for a server child: the server's
// name, GOMAXPROCS=1, the CPUs to pin to, and no PLUGLOOP_EVLIB (which
// would override the backend each plugloop server names).
func childEnviron(name string, cpus []int) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOMAXPROCS", childEnv, childCPUEnv, childProfileEnv, childUpstreamEnv, evlib.EnvVar:
			continue
		}
		env = append(env, kv)
	}
	env = append(env, childEnv+"="+name, "GOMAXPROCS=1")
	if len(cpus) > 0 {
		env = append(env, childCPUEnv+"="+formatCPUs(cpus))
	}
	return env
}

// targetChild stands for an external server (-target): it has no process
// to ask, so start and stop only time the window.
func targetChild(addr string) *child {
	c := &child{name: targetName, stderr: &tailBuffer{max: 1}, done: make(chan struct{})}
	c.hello.Addr = addr
	close(c.done)
	return c
}

// request sends a command line and decodes the one-line answer into v.
func (c *child) request(ctx context.Context, command string, v any) error {
	if c.cmd == nil { // a -target
		var answer any = map[string]bool{"ok": true}
		switch command {
		case "start":
			c.mono0 = monoNS()
		case "stop":
			now := monoNS()
			answer = usage{WallNS: now - c.mono0, StartMono: c.mono0, StopMono: now}
		}
		b, _ := json.Marshal(answer)
		return json.Unmarshal(b, v)
	}
	if _, err := io.WriteString(c.stdin, command+"\n"); err != nil {
		return c.failure(fmt.Errorf("sending %q: %w", command, err))
	}
	return c.receive(ctx, v)
}

func (c *child) receive(ctx context.Context, v any) error {
	timer := time.NewTimer(controlTimeout)
	defer timer.Stop()
	select {
	case line, ok := <-c.lines:
		if !ok {
			return c.failure(errors.New("server exited"))
		}
		if err := json.Unmarshal(line, v); err != nil {
			return c.failure(fmt.Errorf("bad control line %q: %w", line, err))
		}
		return nil
	case <-timer.C:
		return c.failure(fmt.Errorf("no answer within %v", controlTimeout))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// failure adds what the child wrote on stderr to err.
func (c *child) failure(err error) error {
	if s := c.stderr.String(); s != "" {
		return fmt.Errorf("%w (stderr: %s)", err, s)
	}
	return err
}

// stop asks the child to exit and waits for it (and, under strace, for the
// summary to be written); a child that does not exit in time is killed.
func (c *child) stop() {
	if c.cmd == nil {
		return
	}
	io.WriteString(c.stdin, "quit\n")
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.kill()
	}
}

// kill kills the child's process group (the server, and strace with its
// tracee) and reaps it.
func (c *child) kill() {
	if c.cmd == nil {
		return
	}
	if p := c.cmd.Process; p != nil {
		syscall.Kill(-p.Pid, syscall.SIGKILL)
		p.Kill()
	}
	c.stdin.Close()
	<-c.done
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

// ---- load generator ----

// loader is a running load generator: io_uring (uringLoad) or Go's net
// with a goroutine per connection (loadGen).
type loader interface {
	// total is the number of round trips completed so far; it may be
	// called from any goroutine.
	total() uint64
	// Err returns the first error a connection met.
	Err() error
	// pause holds every connection once its round trip in flight is
	// done, and returns once all are held: the server then has nothing
	// to do until resume. It fails if some could not finish within
	// stuckAfter: the server stalled them.
	pause() error
	// resume lets the held connections go on.
	resume()
	// close stops the load: connections finish their round trip in
	// flight, then all are closed. It returns how many could not finish
	// it within a second (stuckAfter), and were cut off: the server
	// stalled them, which must not pass for a lower rate.
	close() (stuck int)
}

// gate holds a load generator's parties (its connections' goroutines, or
// its one loop) between round trips while the load is paused.
type gate struct {
	on     atomic.Bool // paused: parties hold at their next round trip
	mu     sync.Mutex
	open   chan struct{} // closed by resume and by release
	opened bool          // open is closed
	held   int           // parties holding since the last pause
	closed bool          // released for good: hold returns false
}

// paused tells whether a party should hold before its next round trip.
func (g *gate) paused() bool { return g.on.Load() }

// hold waits until resume, and reports false if the load is closing
// instead. It returns at once if the load is no longer paused.
func (g *gate) hold() bool {
	g.mu.Lock()
	if g.closed || !g.on.Load() {
		g.mu.Unlock()
		return !g.closed
	}
	g.held++
	ch := g.open
	g.mu.Unlock()
	<-ch
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.closed
}

// pause asks the parties to hold and waits until parties() of them do,
// for at most stuckAfter. It reports how many had not.
func (g *gate) pause(parties func() int) (missing int) {
	g.mu.Lock()
	if !g.on.Load() {
		g.open, g.opened, g.held = make(chan struct{}), false, 0
		g.on.Store(true)
	}
	g.mu.Unlock()
	deadline := time.Now().Add(stuckAfter)
	for {
		g.mu.Lock()
		missing = parties() - g.held
		g.mu.Unlock()
		if missing <= 0 || time.Now().After(deadline) {
			return max(missing, 0)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// resume lets the holding parties go on.
func (g *gate) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.on.Store(false)
	g.openLocked()
}

// release ends every hold for good: the load is closing.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	g.openLocked()
}

func (g *gate) openLocked() {
	if g.open != nil && !g.opened {
		close(g.open)
		g.opened = true
	}
}

// stalledError says that stuck of total connections got no echo of their
// last message within stuckAfter; stuck < 0: some, how many is not known.
func stalledError(stuck, total int) error {
	some := "some"
	if stuck >= 0 {
		some = strconv.Itoa(stuck)
	}
	return fmt.Errorf("%s of %d connections got no echo of their last message within %v: the server stalled them", some, total, stuckAfter)
}

// stuckAfter is how long close waits for the round trips in flight; on
// loopback one takes microseconds.
const stuckAfter = time.Second

const (
	loadUring = "uring"
	loadNet   = "net"
)

// startLoader starts the load generator cfg selects.
func startLoader(ctx context.Context, cfg *config, addr string, deadline time.Duration) (loader, error) {
	if cfg.load == loadUring {
		l, err := startUringLoad(ctx, addr, cfg.conns, cfg.size, cfg.loadWait)
		if err != nil {
			return nil, err
		}
		return l, nil
	}
	return startLoad(ctx, addr, cfg.conns, cfg.size, deadline)
}

// counter is one connection's progress (round trips, bytes read,
// connections made), alone on its cache line.
type counter struct {
	n atomic.Uint64
	_ [56]byte
}

// counters are a set of connections' (or clients') counters.
type counters []counter

// sum is the progress of all so far.
func (cs counters) sum() uint64 {
	var n uint64
	for i := range cs {
		n += cs[i].n.Load()
	}
	return n
}

// snapshot returns each one's progress so far.
func (cs counters) snapshot() []uint64 {
	p := make([]uint64, len(cs))
	for i := range cs {
		p[i] = cs[i].n.Load()
	}
	return p
}

// stalled counts those that made no progress since snapshot returned
// before: on loopback each of them, served fairly, moves within
// milliseconds, so a server that stalled some must not pass for a slower
// one.
func (cs counters) stalled(before []uint64) int {
	n := 0
	for i, b := range before {
		if cs[i].n.Load() == b {
			n++
		}
	}
	return n
}

// cpuWindow samples, around a measured window, this process's CPU time
// (the load generator's) and the machine's, to tell how much the other
// processes used.
type cpuWindow struct {
	ru0, ru1   syscall.Rusage
	sys0, sys1 cpuTime
	ok0, ok1   bool
}

func (w *cpuWindow) start() {
	w.sys0, w.ok0 = systemCPU()
	syscall.Getrusage(syscall.RUSAGE_SELF, &w.ru0)
}

func (w *cpuWindow) end() {
	syscall.Getrusage(syscall.RUSAGE_SELF, &w.ru1)
	w.sys1, w.ok1 = systemCPU()
}

// span is one measured window. Its ends are sampled here, between the two
// exchanges with the child that bracket it: with its one P busy serving,
// the child may answer "start" or "stop" only after milliseconds (the
// scheduler's preemption), and where in that time it took its snapshot is
// not known closely enough to count round trips against its CPU (a
// midpoint was off by up to 10% of a 0.1 s slice). So the load's progress,
// the server's CPU (processCPU) and the machine's (cw) are all sampled at
// the span's two ends in this process, back to back.
type span struct {
	u      usage     // the child's own figures, over its window around the span
	cw     cpuWindow // this process's and the machine's CPU over the span
	wallNS int64
	done   float64 // the load's progress in the span
	cpuNS  int64   // the server's CPU time in the span
	// childDone is the load's progress over the child's own window,
	// interpolated to when it took its snapshots: what its Stats and
	// context switches are counted against.
	childDone float64
}

// stamp is the load's progress at a moment (monoNS).
type stamp struct {
	t int64
	n uint64
}

func stampOf(total func() uint64) stamp { return stamp{n: total(), t: monoNS()} }

// at is the progress at t, which lies between a and b, taken as linear.
func at(a, b stamp, t int64) float64 {
	if b.t <= a.t || t <= a.t {
		return float64(a.n)
	}
	if t >= b.t {
		return float64(b.n)
	}
	return float64(a.n) + float64(b.n-a.n)*float64(t-a.t)/float64(b.t-a.t)
}

// measureSpan has the server child ch measure itself for d while the
// load, whose progress total counts, runs on, and measures the span (see
// span) in the child's window.
func measureSpan(ctx context.Context, ch *child, total func() uint64, d time.Duration) (sp span, err error) {
	serverCPU := func() (int64, bool) {
		if ch.cmd == nil { // a -target: no process of ours to ask
			return 0, false
		}
		return processCPU(ch.cmd.Process.Pid)
	}
	a0 := stampOf(total)
	var ok map[string]bool
	if err := ch.request(ctx, "start", &ok); err != nil {
		return sp, err
	}
	b0 := stampOf(total)
	sp.cw.start()
	k0, kok0 := serverCPU()
	w0 := stampOf(total)
	if err := sleep(ctx, d); err != nil {
		return sp, err
	}
	w1 := stampOf(total)
	k1, kok1 := serverCPU()
	sp.cw.end()
	a1 := stampOf(total)
	if err := ch.request(ctx, "stop", &sp.u); err != nil {
		return sp, err
	}
	b1 := stampOf(total)
	sp.wallNS, sp.done = w1.t-w0.t, float64(w1.n-w0.n)
	sp.childDone = at(a1, b1, sp.u.StopMono) - at(a0, b0, sp.u.StartMono)
	switch {
	case kok0 && kok1:
		sp.cpuNS = k1 - k0
	case sp.u.WallNS > 0:
		// No clock to read another process' CPU by (not Linux): the
		// child's rusage, over its window, in the span's proportion.
		sp.cpuNS = int64(float64(sp.u.UserNS+sp.u.SysNS) * float64(sp.wallNS) / float64(sp.u.WallNS))
	}
	return sp, nil
}

// window is what measureWindow found over one measured window.
type window struct {
	span
	stalled int // counters that made no progress in it
}

// measureWindow has the server child ch measure itself for the suite's
// duration while the load, whose progress cs counts, runs on.
func (s *suite) measureWindow(ctx context.Context, ch *child, cs counters) (w window, err error) {
	each0 := cs.snapshot()
	if w.span, err = measureSpan(ctx, ch, cs.sum, s.duration()); err != nil {
		return w, err
	}
	w.stalled = cs.stalled(each0)
	return w, nil
}

// pct is ns in per cent of one CPU over the span.
func (sp *span) pct(ns int64) float64 { return float64(ns) / float64(sp.wallNS) * 100 }

// clientNS is the CPU time this process used in the window.
func (w *cpuWindow) clientNS() int64 {
	return tvNS(w.ru1.Utime) - tvNS(w.ru0.Utime) + tvNS(w.ru1.Stime) - tvNS(w.ru0.Stime)
}

// otherPct is the CPU that processes other than this one and the server
// (which used serverNS) used in the window, in per cent of one CPU over
// wallNS, and steal what the hypervisor took; -1 each where unknown.
func (w *cpuWindow) otherPct(serverNS, wallNS int64) (other, steal float64) {
	o, ok := w.otherNS(serverNS)
	if !ok || wallNS <= 0 {
		return -1, -1
	}
	wall := float64(wallNS)
	return float64(max(o, 0)) / wall * 100, float64(w.sys1.steal-w.sys0.steal) / wall * 100
}

// otherNS is the CPU time that processes other than this one and the
// server (which used serverNS) used in the window. The machine's count
// moves in whole ticks, so over a short window it may come out below
// zero; summed over many windows the error averages out.
func (w *cpuWindow) otherNS(serverNS int64) (ns int64, ok bool) {
	if !w.ok0 || !w.ok1 {
		return 0, false
	}
	return int64(w.sys1.busy-w.sys0.busy) - serverNS - w.clientNS(), true
}

// loadGen runs closed-loop ping-pong: each connection writes size bytes,
// reads them back in full, checks them, and repeats.
type loadGen struct {
	conns    []net.Conn
	counts   counters
	wg       sync.WaitGroup
	finished atomic.Int64  // connections whose goroutine ended
	deadline time.Duration // each connection's deadline, from start or resume
	gate
	firstError
}

// firstError keeps the first error a set of connections met. Once stop is
// set the set is closing, and what fails then is not a failure.
type firstError struct {
	stop   atomic.Bool
	prefix string // put before the error, with ": "
	mu     sync.Mutex
	err    error
}

func (f *firstError) fail(err error) {
	if f.stop.Load() {
		return
	}
	if f.prefix != "" {
		err = fmt.Errorf("%s: %w", f.prefix, err)
	}
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

// Err returns the first error a connection met.
func (f *firstError) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func startLoad(ctx context.Context, addr string, n, size int, deadline time.Duration) (*loadGen, error) {
	l := &loadGen{counts: make(counters, n), deadline: deadline, firstError: firstError{prefix: "load"}}
	until := time.Now().Add(deadline)
	d := net.Dialer{Timeout: 5 * time.Second}
	for range n {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("connection %d: %w", len(l.conns)+1, err)
		}
		c.SetDeadline(until)
		l.conns = append(l.conns, c)
	}
	for i, c := range l.conns {
		l.wg.Add(1)
		go l.pingPong(c, &l.counts[i], size, byte(i))
	}
	return l, nil
}

func (l *loadGen) pingPong(c net.Conn, cnt *counter, size int, seq byte) {
	defer l.wg.Done()
	defer l.finished.Add(1)
	out, in := make([]byte, size), make([]byte, size)
	for i := range out {
		out[i] = byte(i)
	}
	for ; !l.stop.Load(); seq++ {
		if l.paused() && !l.hold() {
			return
		}
		out[0] = seq
		if _, err := c.Write(out); err != nil {
			l.fail(err)
			return
		}
		if _, err := io.ReadFull(c, in); err != nil {
			l.fail(err)
			return
		}
		if !bytes.Equal(in, out) {
			l.fail(errors.New("echo returned different bytes"))
			return
		}
		cnt.n.Add(1)
	}
}

// total is the number of round trips completed so far.
func (l *loadGen) total() uint64 { return l.counts.sum() }

func (l *loadGen) pause() error {
	if n := l.gate.pause(func() int { return len(l.conns) - int(l.finished.Load()) }); n > 0 {
		return stalledError(n, len(l.conns))
	}
	return nil
}

func (l *loadGen) resume() {
	until := time.Now().Add(l.deadline)
	for _, c := range l.conns {
		c.SetDeadline(until)
	}
	l.gate.resume()
}

// close stops the load: connections finish their round trip in flight,
// then all are closed.
func (l *loadGen) close() (stuck int) {
	l.stop.Store(true)
	l.release()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(stuckAfter):
		stuck = len(l.conns) - int(l.finished.Load())
	}
	for _, c := range l.conns {
		c.Close()
	}
	<-done
	return stuck
}

// ---- one run ----

// runResult is one measurement of one server.
type runResult struct {
	Server     string  `json:"server"`
	Repeat     int     `json:"repeat"` // 0-based; -1 for the strace run
	Error      string  `json:"error,omitempty"`
	RoundTrips float64 `json:"round_trips"`
	// StatsRoundTrips is the round trips over the child's own window,
	// which its Stats and context switches count (see span).
	StatsRoundTrips float64 `json:"stats_round_trips"`
	Seconds         float64 `json:"seconds"`
	RTPerSec        float64 `json:"round_trips_per_sec"`
	CPUNS           int64   `json:"server_cpu_ns"`
	UserNS          int64   `json:"server_user_ns"`
	SysNS           int64   `json:"server_sys_ns"`
	CPUPerRT        float64 `json:"server_cpu_us_per_rt"`
	ClientCPU       float64 `json:"client_cpu_us_per_rt"`
	MaxRSSKB        int64   `json:"server_peak_rss_kb"`
	// CSWPerRT is the server's context switches (voluntary and not) per
	// round trip: how often it went to sleep or was preempted.
	CSWPerRT float64 `json:"server_csw_per_rt"`
	// OtherCPU is the CPU time, in % of one CPU, that processes other than
	// the server and the bench used during the window; StealCPU is what
	// the hypervisor took. Both are -1 where unknown.
	OtherCPU   float64 `json:"other_cpu_pct"`
	otherNS    int64   // OtherCPU's CPU time, unclamped (see cpuWindow.otherNS)
	otherOK    bool    // otherNS is known
	StealCPU   float64 `json:"steal_cpu_pct"`
	Stats      *Stats  `json:"stats,omitempty"`      // plugloop servers: core counters
	PID        int     `json:"server_pid,omitempty"` // the server child's
	GoMaxProcs int     `json:"server_gomaxprocs"`
	CPUs       []int   `json:"server_cpus,omitempty"`
	PinError   string  `json:"pin_error,omitempty"`
	// The strace run only: every round trip of the child's life, and the
	// summary over the same life.
	LifeRoundTrips uint64        `json:"life_round_trips,omitempty"`
	Strace         *syscallCount `json:"strace,omitempty"`
	// With -perf: every system call of the server over a window around the
	// measured one, and the round trips in that window.
	Perf           *syscallCount `json:"perf,omitempty"`
	PerfRoundTrips float64       `json:"perf_round_trips,omitempty"`
	PerfError      string        `json:"perf_error,omitempty"`
}

// settle is how long a paused load runs again before a slice is measured:
// the server's goroutines and the runtime's monitor wake from idle.
const settle = 50 * time.Millisecond

// session is one server child under load, measured in slices. Between
// slices its load is paused and the server idles, while other servers'
// slices run: the servers of a table take turns every slice, so a change
// in the machine's speed that lasts longer than a round of slices (the
// VM this bench is run on has them, ±20% for seconds) falls on every
// server alike.
type session struct {
	cfg       *config
	name      string
	ch        *child
	lg        loader
	straceOut string // the strace summary's file, for a traced session
	failed    string // the session's error; later slices report it
	measured  bool   // a slice was measured, so the load is paused
	ended     bool   // end ran
	stuck     int    // what end found
}

// openSession starts the named server, and its load. A failure is kept
// and reported by every slice.
func openSession(ctx context.Context, cfg *config, name string, straced bool) *session {
	s := &session{cfg: cfg, name: name}
	if straced {
		f, err := os.CreateTemp("", "plugloop-bench-strace-*.txt")
		if err != nil {
			s.failed = err.Error()
			return s
		}
		s.straceOut = f.Name()
		f.Close()
	}
	ch, err := startChild(ctx, cfg, name, s.straceOut)
	if err != nil {
		s.failed = "start: " + err.Error()
		return s
	}
	s.ch = ch
	// A connection's I/O deadline, counted from the start and again from
	// every resume, stops a stalled server from holding the bench.
	deadline := max(cfg.warmup, settle) + cfg.duration + controlTimeout
	if s.lg, err = startLoader(ctx, cfg, s.ch.hello.Addr, deadline); err != nil {
		s.lg = nil
		s.failed = s.ch.failure(err).Error()
	}
	return s
}

// measure runs the load for one slice, after a warm-up (the first slice)
// or a settle (later ones), measures the server over cfg.duration, and
// pauses the load again.
func (s *session) measure(ctx context.Context, repeat int) (res runResult) {
	res = runResult{Server: s.name, Repeat: repeat}
	if s.failed != "" {
		res.Error = s.failed
		return res
	}
	cfg, ch, lg := s.cfg, s.ch, s.lg
	res.PID, res.GoMaxProcs, res.CPUs, res.PinError = ch.hello.PID, ch.hello.GoMaxProcs, ch.hello.CPUs, ch.hello.PinError
	fail := func(err error) runResult {
		if lerr := lg.Err(); lerr != nil && !errors.Is(err, context.Canceled) {
			err = lerr
		}
		res.Error = ch.failure(err).Error()
		s.failed = res.Error
		s.end() // a load left running would disturb the other servers' slices
		return res
	}
	wait := cfg.warmup
	if s.measured {
		lg.resume()
		wait = min(settle, cfg.warmup)
	}
	if err := sleep(ctx, wait); err != nil {
		return fail(err)
	}
	if err := lg.Err(); err != nil {
		return fail(err)
	}
	var pc *perfCounter
	var p0 float64
	if cfg.perfPath != "" && s.straceOut == "" && ch.cmd != nil {
		var pa uint64
		var err error
		if pc, err = enablePerf(ctx, cfg.perfPath, ch.cmd.Process.Pid, func() { pa = lg.total() }); err != nil {
			res.PerfError = err.Error()
		} else {
			p0 = (float64(pa) + float64(lg.total())) / 2
			defer pc.abort()
		}
	}
	sp, err := measureSpan(ctx, ch, lg.total, cfg.duration)
	if err != nil {
		return fail(err)
	}
	if err := lg.Err(); err != nil {
		return fail(err)
	}
	if pc != nil {
		qa := lg.total()
		var p1 float64
		n, err := pc.stop(ctx, func() { p1 = (float64(qa) + float64(lg.total())) / 2 })
		if err != nil {
			res.PerfError = err.Error()
		} else {
			res.Perf, res.PerfRoundTrips = n, p1-p0
		}
	}
	if err := lg.pause(); err != nil {
		return fail(err)
	}
	s.measured = true

	rts, u := sp.done, sp.u
	if rts <= 0 || sp.childDone <= 0 {
		return fail(errors.New("no round trips completed"))
	}
	res.RoundTrips, res.StatsRoundTrips = rts, sp.childDone
	res.Seconds = time.Duration(sp.wallNS).Seconds()
	res.RTPerSec = rts / res.Seconds
	res.CPUNS = sp.cpuNS
	if all := u.UserNS + u.SysNS; all > 0 { // the child's split, over its window
		res.UserNS = int64(float64(sp.cpuNS) * float64(u.UserNS) / float64(all))
		res.SysNS = sp.cpuNS - res.UserNS
	}
	res.CPUPerRT = float64(res.CPUNS) / 1e3 / rts
	res.ClientCPU = float64(sp.cw.clientNS()) / 1e3 / rts
	res.MaxRSSKB = u.MaxRSSKB
	res.CSWPerRT = float64(u.VolCSW+u.InvolCSW) / sp.childDone
	res.OtherCPU, res.StealCPU = sp.cw.otherPct(res.CPUNS, sp.wallNS)
	res.otherNS, res.otherOK = sp.cw.otherNS(res.CPUNS)
	res.Stats = u.Stats
	return res
}

// end stops the load and the server, once; it returns how many
// connections were stuck (see loader.close).
func (s *session) end() (stuck int) {
	if s.ended {
		return s.stuck
	}
	s.ended = true
	if s.lg != nil {
		s.stuck = s.lg.close()
		if ul, ok := s.lg.(*uringLoad); ok && os.Getenv("BENCH_DEBUG") != "" {
			progress("    load: %s\n", ul.stats)
		}
	}
	if s.ch != nil {
		if s.stuck > 0 {
			s.ch.kill()
		} else {
			s.ch.stop()
		}
	}
	return s.stuck
}

// close ends the session. For a traced session it adds the strace
// summary, over the child's life, to res.
func (s *session) close(res *runResult) {
	if s.straceOut != "" {
		defer os.Remove(s.straceOut)
	}
	stuck := s.end()
	if s.lg != nil {
		res.LifeRoundTrips = s.lg.total()
	}
	if res.Error == "" && stuck > 0 {
		res.Error = stalledError(stuck, s.cfg.conns).Error()
	}
	if s.straceOut == "" || res.Error != "" {
		res.LifeRoundTrips = 0
		return
	}
	st, err := parseStraceFile(s.straceOut)
	if err != nil {
		res.Error = "strace: " + err.Error()
		return
	}
	res.Strace = st
}

// runOne starts the server, loads it, measures one slice, and shuts it
// down.
func runOne(ctx context.Context, cfg *config, name string, repeat int, straced bool) runResult {
	s := openSession(ctx, cfg, name, straced)
	res := s.measure(ctx, repeat)
	s.close(&res)
	return res
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ---- strace -c ----

func parseStraceFile(path string) (*syscallCount, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseStrace(string(b))
}

// parseStrace reads the summary strace -c writes:
//
//	% time     seconds  usecs/call     calls    errors syscall
//	------ ----------- ----------- --------- --------- ----------------
//	 75.39    0.000821         821         1           execve
//	...
//	100.00    0.001089          43        25         1 total
func parseStrace(text string) (*syscallCount, error) {
	s := &syscallCount{Calls: map[string]uint64{}}
	found := false
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || len(f) > 6 {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue // header or rule
		}
		calls, err := strconv.ParseUint(f[3], 10, 64)
		if err != nil {
			continue
		}
		name := f[len(f)-1]
		if name == "total" {
			s.Total, found = calls, true
			continue
		}
		s.Calls[name] += calls
	}
	if !found {
		return nil, fmt.Errorf("no summary in strace output %q", strings.TrimSpace(text))
	}
	return s, nil
}

// ---- CPU lists ----

func formatCPUs(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}

func parseCPUs(s string) []int {
	var cpus []int
	for _, f := range strings.Split(s, ",") {
		if c, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && c >= 0 {
			cpus = append(cpus, c)
		}
	}
	return cpus
}
