//go:build unix

package main

// The server side: the bench re-executes itself with childEnv set, and the
// child runs one echo server, pinned and with GOMAXPROCS=1, answering a
// line-based control protocol on stdin/stdout:
//
//	child:  {"addr": ...}                 once listening (or {"error": ...})
//	parent: start  → child: {"ok": true}  snapshot of CPU time and counters
//	parent: stop   → child: {...usage}    deltas since start
//	parent: quit, or EOF on stdin → the child exits.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"
	"golang.org/x/sys/unix"
)

const (
	// childEnv names the server a re-executed bench binary runs.
	childEnv = "PLUGLOOP_BENCH_SERVER"
	// childCPUEnv lists the CPUs (comma separated) the child pins itself to.
	childCPUEnv = "PLUGLOOP_BENCH_CPUS"
	// childProfileEnv, if set, is where the child writes a CPU profile of
	// the measured window.
	childProfileEnv = "PLUGLOOP_BENCH_CPUPROFILE"
	// childUpstreamEnv is the echo server a proxy child (the relay
	// scenario) forwards to.
	childUpstreamEnv = "PLUGLOOP_BENCH_UPSTREAM"

	plugloopPrefix = "plugloop/"
	gnetName       = "gnet"
	netName        = "net"

	// netBufSize is the fixed buffer of the goroutine-per-connection
	// server, the size io.Copy uses.
	netBufSize = 32 << 10
)

// hello is the child's first line.
type hello struct {
	Addr       string `json:"addr,omitempty"`
	Error      string `json:"error,omitempty"`
	PID        int    `json:"pid"`
	GoMaxProcs int    `json:"gomaxprocs"`
	CPUs       []int  `json:"cpus,omitempty"` // the child's affinity
	PinError   string `json:"pin_error,omitempty"`
	FDLimit    uint64 `json:"fd_limit"`
}

// usage is the child's answer to stop: what the server used between start
// and stop.
type usage struct {
	WallNS   int64 `json:"wall_ns"`
	UserNS   int64 `json:"user_ns"`
	SysNS    int64 `json:"sys_ns"`
	MaxRSSKB int64 `json:"maxrss_kb"` // peak over the child's life
	// Context switches: the server slept (voluntary) or was preempted.
	VolCSW   int64  `json:"nvcsw"`
	InvolCSW int64  `json:"nivcsw"`
	Stats    *Stats `json:"stats,omitempty"`
	// When the child took its two snapshots (CLOCK_MONOTONIC), so that the
	// parent can tell how far the load got over the child's window.
	StartMono int64 `json:"start_mono_ns"`
	StopMono  int64 `json:"stop_mono_ns"`
}

// monoNS is CLOCK_MONOTONIC, which every process on the machine shares.
func monoNS() int64 {
	var ts unix.Timespec
	unix.ClockGettime(clockMonotonic, &ts)
	return ts.Nano()
}

// Stats mirrors core.Stats with JSON names.
type Stats struct {
	Waits           uint64 `json:"waits"`
	InterestChanges uint64 `json:"interest_changes"`
	Wakes           uint64 `json:"wakes"`
	Reads           uint64 `json:"reads"`
	Writes          uint64 `json:"writes"`
	Accepts         uint64 `json:"accepts"`
	Closes          uint64 `json:"closes"`
	Dispatches      uint64 `json:"dispatches"`
	ForcedServices  uint64 `json:"forced_services"`
	TimersFired     uint64 `json:"timers_fired"`
	Splices         uint64 `json:"splices,omitempty"` // relays' splice(2) calls (in Syscalls too)
	Relayed         uint64 `json:"relayed,omitempty"` // bytes relays moved
	Syscalls        uint64 `json:"syscalls"`
}

func statsDelta(a, b core.Stats) *Stats {
	d := core.Stats{
		Waits: b.Waits - a.Waits, InterestChanges: b.InterestChanges - a.InterestChanges,
		Wakes: b.Wakes - a.Wakes, Reads: b.Reads - a.Reads, Writes: b.Writes - a.Writes,
		Accepts: b.Accepts - a.Accepts, Closes: b.Closes - a.Closes,
		Dispatches: b.Dispatches - a.Dispatches, ForcedServices: b.ForcedServices - a.ForcedServices,
		TimersFired: b.TimersFired - a.TimersFired,
		Splices:     b.Splices - a.Splices, Relayed: b.Relayed - a.Relayed,
	}
	return &Stats{
		Waits: d.Waits, InterestChanges: d.InterestChanges, Wakes: d.Wakes, Reads: d.Reads,
		Writes: d.Writes, Accepts: d.Accepts, Closes: d.Closes, Dispatches: d.Dispatches,
		ForcedServices: d.ForcedServices, TimersFired: d.TimersFired, Splices: d.Splices, Relayed: d.Relayed,
		Syscalls: d.Syscalls(),
	}
}

// serverInfo describes one server the bench can run.
type serverInfo struct {
	Name    string
	Backend string // plugloop backend name; "" for peers
	Skip    string // why it cannot run here; "" if it can
	OptIn   string // why it runs only when -servers names it; "" if by default
}

// knownServers lists plugloop's backends (evlib.Backends) followed by the
// peers. Backends that cannot run here, or that the application's loop must
// drive, carry a Skip reason.
func knownServers() []serverInfo {
	var out []serverInfo
	for _, d := range evlib.Backends() {
		s := serverInfo{Name: plugloopPrefix + d.Name, Backend: d.Name}
		switch {
		case !d.Available():
			if d.Unavailable != nil {
				s.Skip = d.Unavailable.Error()
			} else {
				s.Skip = "no constructor"
			}
		case d.Caps&evlib.CapAppDriven != 0 && d.Name != foreign.Name:
			s.Skip = "app-driven: needs the application's own loop"
		}
		out = append(out, s)
	}
	return append(out, serverInfo{Name: rawName, Skip: rawAvailable}, serverInfo{Name: gnetName},
		serverInfo{Name: netpollName}, serverInfo{Name: netName},
		serverInfo{Name: netpollFloorName, OptIn: "the cheapest echo found on netpoll's reads: a goroutine per connection parked in Peek, raw write(2)s"})
}

// runChild is the child's main. It never returns.
func runChild(name string) {
	enc := json.NewEncoder(os.Stdout)
	h := hello{PID: os.Getpid()}
	if cpus := os.Getenv(childCPUEnv); cpus != "" {
		if err := pinProcess(parseCPUs(cpus)); err != nil {
			h.PinError = err.Error()
		}
	}
	h.CPUs, _ = affinity()
	h.GoMaxProcs = runtime.GOMAXPROCS(0)
	h.FDLimit = raiseFDLimit()

	addr, stats, err := startServer(name)
	if err != nil {
		h.Error = err.Error()
		enc.Encode(h)
		os.Exit(1)
	}
	h.Addr = addr
	if err := enc.Encode(h); err != nil {
		os.Exit(1)
	}

	var (
		mono0   int64
		ru0     syscall.Rusage
		s0      core.Stats
		started bool
	)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "start":
			startProfile()
			if stats != nil {
				s0 = stats()
			}
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			mono0, started = monoNS(), true
			enc.Encode(map[string]bool{"ok": true})
		case "stop":
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			mono1 := monoNS()
			pprof.StopCPUProfile()
			u := usage{
				WallNS:    mono1 - mono0,
				UserNS:    tvNS(ru.Utime) - tvNS(ru0.Utime),
				SysNS:     tvNS(ru.Stime) - tvNS(ru0.Stime),
				MaxRSSKB:  maxRSSKB(&ru),
				VolCSW:    int64(ru.Nvcsw - ru0.Nvcsw),
				InvolCSW:  int64(ru.Nivcsw - ru0.Nivcsw),
				StartMono: mono0, StopMono: mono1,
			}
			if stats != nil {
				u.Stats = statsDelta(s0, stats())
			}
			if !started {
				u = usage{}
			}
			enc.Encode(u)
		case "quit":
			os.Exit(0)
		}
	}
	os.Exit(0) // the parent went away
}

// startProfile starts the CPU profile childProfileEnv asks for.
func startProfile() {
	path := os.Getenv(childProfileEnv)
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpuprofile:", err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "cpuprofile:", err)
	}
	// The profile is flushed by StopCPUProfile; f stays open until exit.
}

func tvNS(tv syscall.Timeval) int64 { return int64(tv.Sec)*1e9 + int64(tv.Usec)*1e3 }

// startServer starts the named echo server listening on 127.0.0.1:0. For
// plugloop servers stats reads the context's counters.
func startServer(name string) (addr string, stats func() core.Stats, err error) {
	switch {
	case name == gnetName:
		addr, err = startGnet()
		return addr, nil, err
	case name == netName:
		addr, err = startNet()
		return addr, nil, err
	case name == netpollName:
		addr, err = startNetpoll(false)
		return addr, nil, err
	case name == netpollFloorName:
		addr, err = startNetpoll(true)
		return addr, nil, err
	case name == rawName:
		addr, err = startRawEpoll()
		return addr, nil, err
	case name == plugloopPrefix+foreign.Name:
		return startForeign()
	case strings.HasPrefix(name, proxyPrefix):
		return startProxy(strings.TrimPrefix(name, proxyPrefix), os.Getenv(childUpstreamEnv))
	case strings.HasPrefix(name, plugloopPrefix):
		return startPlugloop(strings.TrimPrefix(name, plugloopPrefix))
	}
	return "", nil, fmt.Errorf("unknown server %q", name)
}

// startPlugloop serves internal/echo — the lws-style echo of examples/echo
// — on one plugloop context with the named backend.
func startPlugloop(backend string) (string, func() core.Stats, error) {
	ctx, addr, err := echoContext(backend, echo.Protocol("echo"))
	if err != nil {
		return "", nil, err
	}
	go func() {
		if err := ctx.Run(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "plugloop: Run:", err)
			os.Exit(1)
		}
	}()
	return addr, ctx.Stats, nil
}

// echoContext makes the context a plugloop server child runs: proto on the
// named backend, listening on a loopback port (returned), warnings and
// worse logged to stderr.
func echoContext(backend string, proto core.Protocol) (*core.Context, string, error) {
	ctx, err := core.New(core.Info{
		EventLib:  backend,
		Protocols: []core.Protocol{proto},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, "", err
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	if err != nil {
		ctx.Destroy()
		return nil, "", err
	}
	return ctx, ln.Addr().String(), nil
}

// gnetEcho is gnet's own echo server: one event loop, OnTraffic writes back
// whatever arrived.
type gnetEcho struct {
	gnet.BuiltinEventEngine
	addr chan<- string
}

func (g *gnetEcho) OnBoot(eng gnet.Engine) gnet.Action {
	// The listener exists by now; ask its copy where port 0 landed.
	fd, err := eng.Dup()
	if err != nil {
		g.addr <- "error: " + err.Error()
		return gnet.Shutdown
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		g.addr <- "error: " + err.Error()
		return gnet.Shutdown
	}
	sa4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		g.addr <- fmt.Sprintf("error: unexpected listener address %T", sa)
		return gnet.Shutdown
	}
	g.addr <- (&net.TCPAddr{IP: sa4.Addr[:], Port: sa4.Port}).String()
	return gnet.None
}

func (g *gnetEcho) OnTraffic(c gnet.Conn) gnet.Action {
	buf, _ := c.Next(-1)
	c.Write(buf)
	return gnet.None
}

// quietLogger drops gnet's log output (it would otherwise go through zap to
// stderr).
type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(string, ...any) {}

func startGnet() (string, error) {
	addrc := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- gnet.Run(&gnetEcho{addr: addrc}, "tcp://127.0.0.1:0",
			gnet.WithMulticore(false), gnet.WithNumEventLoop(1), gnet.WithLogger(quietLogger{}))
	}()
	select {
	case a := <-addrc:
		if e, ok := strings.CutPrefix(a, "error: "); ok {
			return "", errors.New(e)
		}
		go func() {
			if err := <-errc; err != nil {
				fmt.Fprintln(os.Stderr, "gnet.Run:", err)
			}
			os.Exit(1)
		}()
		return a, nil
	case err := <-errc:
		if err == nil {
			err = errors.New("gnet.Run returned before booting")
		}
		return "", err
	case <-time.After(10 * time.Second):
		return "", errors.New("gnet did not boot within 10 s")
	}
}

// startNet is the standard library's way: a goroutine per connection that
// reads into a fixed buffer and writes back what it read. (Not io.Copy
// itself: between two TCP connections it would splice.)
func startNet() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, "accept:", err)
				os.Exit(1)
			}
			go echoConn(c)
		}
	}()
	return ln.Addr().String(), nil
}

func echoConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, netBufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF, or the load generator reset the connection
		}
	}
}
