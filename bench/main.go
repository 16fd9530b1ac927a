//go:build unix

// Command bench is plugloop's cross-backend benchmark: every plugloop
// backend (poll, epoll, foreign under a unix.Poll host loop, the gnet and
// netpoll adapters, kqueue where it exists) against gnet and
// cloudwego/netpoll natively, Go's net and a bare epoll loop, in nine
// scenarios, and a tenth on request:
//
//	pingpong     closed-loop echo, 64 B and 1 KiB, 50 / 1,000 / 10,000 connections
//	abstraction  the same echo on each backend and on the bare epoll loop
//	stream       pipelined echo, MB/s and server CPU per MB
//	churn        short connections, one echo each: server CPU per connection
//	arrival      a new connection's dial and first echo beside 50 busy ones
//	idle         server RSS per idle connection (10,000)
//	slow         slow readers: does the server's RSS plateau?
//	timers       schedule and cancel a million timers; fire order
//	wakeup       Post / CancelService latency and rate per backend
//	relay        (only with -scenarios relay) a TCP proxy in front of an echo
//	             upstream: core.Conn.RelayTo, a callback proxy, io.Copy;
//	             proxy CPU and syscalls per MB next to MB/s
//
//	go run ./bench                          # the default suite, about 105 s
//	go run ./bench -full                    # everything, longer (several minutes)
//	go run ./bench -scenarios pingpong -servers epoll,gnet -conns 1000 -sizes 64 -repeats 40  # more slices
//	go run ./bench -json > result.json      # machine-readable
//	go run ./bench -html report.html        # tables and SVG charts in one file
//	go run ./bench -target 10.0.0.2:7000    # any external echo server (no server CPU then)
//	go run ./bench -scenarios pingpong -perf     # every server's syscalls per round trip
//	go run ./bench -scenarios pingpong -strace   # adds a traced run per server
//	go run ./bench -cpuprofile prof         # prof/SERVER.pprof for go tool pprof
//
// The figure to compare is server CPU per operation: the server child's
// CPU clock (user+sys), read by the bench at the same moments as the
// load's counters, at both ends of the measured window. The ping-pong load
// generator is, by default, one thread driving every connection through
// one io_uring (uring_linux.go): it costs well under half a server's CPU
// per round trip, so requests queue at the server. -load net uses a
// goroutine per connection instead; it is also the fallback where
// io_uring is unavailable. BENCH_DEBUG=1 prints the ring's figures.
//
// Each server runs in a child process (this binary, re-executed with
// PLUGLOOP_BENCH_SERVER set) with GOMAXPROCS=1, pinned to the first CPU
// while the load generators run on the others. The child answers start,
// stop and quit on stdin and reports its CPU time, peak RSS, context
// switches and, for plugloop, the core's Stats over the window; the
// parent reads its RSS from /proc. Timers and wakeups run in task children
// (PLUGLOOP_BENCH_TASK). The bench watches /proc/stat and flags runs
// during which other processes were busy, and repeats that disagree by
// more than ±5 %.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// config is what the flags select.
type config struct {
	servers       []serverInfo
	serversChosen bool         // -servers named them (else: the default set)
	skipped       []serverInfo // known but unable to run here
	conns         int          // ping-pong: the configuration being run
	size          int
	warmup        time.Duration
	duration      time.Duration
	repeats       int
	json          bool
	strace        bool
	// straceFirst: -strace was not given and strace is installed, so the
	// first ping-pong table gets the traced runs (syscalls for every
	// server, peers included) and the rest of the run stays quick.
	straceFirst bool
	stracePath  string
	perfPath    string // -perf: count syscalls with perf stat
	profileDir  string // -cpuprofile: where children write CPU profiles
	serverCPUs  []int  // nil: not pinned
	clientCPUs  []int
	clientProc  int // the load generator's GOMAXPROCS
	pinNote     string
	load        string // loadUring or loadNet
	loadNote    string // which load generator, and how
	loadWait    int    // -load-wait
	target      string // -target: an external echo server
	fdLimit     uint64 // this process's RLIMIT_NOFILE, raised to the hard limit
}

func main() {
	if name := os.Getenv(childEnv); name != "" {
		runChild(name) // a server child; never returns
	}
	if name := os.Getenv(taskEnv); name != "" {
		runTask(name) // an in-process measurement child; never returns
	}
	cfg := &config{}
	s := &suite{cfg: cfg}
	servers := flag.String("servers", "", "comma-separated servers to run (default: all but netpoll-floor, which runs only when named); plugloop backends may be named without the plugloop/ prefix")
	scen := flag.String("scenarios", "", "comma-separated scenarios to run (default: all but relay, which runs only when named): "+strings.Join(scenarioNames(), ", "))
	conns := flag.String("conns", "", "ping-pong: comma-separated connection counts (default 50,1000; -full 50,1000,10000)")
	sizes := flag.String("sizes", "", "ping-pong: comma-separated payload sizes in bytes (default 64,1024)")
	flag.BoolVar(&s.full, "full", false, "run every scenario at every size and connection count, longer and with 3 repeats (several minutes)")
	flag.DurationVar(&cfg.duration, "duration", 0, "measured time per server and repeat; in ping-pong, per slice (default: ping-pong 0.1s, with -perf 0.6s, -full 0.5s; others 0.6s, -full 2s)")
	flag.DurationVar(&cfg.warmup, "warmup", 200*time.Millisecond, "load before measuring, per server and repeat")
	flag.IntVar(&cfg.repeats, "repeats", 0, "runs per server, interleaved, every other round reversed (A B C, C B A); medians are reported; in ping-pong, slices of one run per server (default: ping-pong 12; others 1, -full 3)")
	flag.IntVar(&s.streamConns, "stream-conns", 50, "streaming echo and relay: connections, each with a writer and a reader")
	flag.IntVar(&s.churnClients, "churn-clients", 32, "connection churn: clients, each opening one connection after another")
	flag.IntVar(&s.idleConns, "idle-conns", 10000, "idle: connections opened against each server")
	flag.IntVar(&s.slowConns, "slow-conns", 50, "slow consumer: connections")
	relayProxies := flag.String("relay-proxies", strings.Join(defaultRelayProxies, ","), "relay: comma-separated proxies, each relayto/BACKEND (core.Conn.RelayTo), callback/BACKEND (RAW_RX and Write) or stdlib (io.Copy)")
	flag.IntVar(&s.timerCount, "timers", 1000000, "timers: how many to schedule and cancel")
	flag.StringVar(&s.htmlPath, "html", "", "also write a self-contained HTML report with charts to `file`")
	flag.StringVar(&cfg.target, "target", "", "drive the external echo server at `host:port` instead of the bench's own (ping-pong and streaming only; no server CPU figures)")
	flag.BoolVar(&cfg.json, "json", false, "print machine-readable JSON instead of the tables")
	flag.BoolVar(&cfg.strace, "strace", false, "ping-pong: add one run per server under strace -c -f and report its syscalls per round trip (that run's CPU figures are not comparable); "+
		"unset, the first ping-pong table gets it whenever strace is installed; -strace=false turns it off")
	perf := flag.Bool("perf", false, "ping-pong: count every system call of each server over the measured window with perf stat (syscall tracepoints; adds a little kernel CPU per call)")
	flag.StringVar(&cfg.profileDir, "cpuprofile", "", "write a CPU profile of each server's measured window to `dir`/SERVER.pprof (the last repeat wins; profiling costs the server a little CPU)")
	flag.StringVar(&cfg.load, "load", loadUring, "ping-pong load generator: uring (one thread, all connections on one io_uring; falls back to net where io_uring is unavailable) or net (a goroutine per connection)")
	flag.IntVar(&cfg.loadWait, "load-wait", 0, "uring load generator: completions to wait for per io_uring_enter (0: a quarter of -conns, at most 64)")
	pin := flag.Bool("pin", true, "pin the server to one CPU and the load generator to the others (needs >= 2 CPUs)")
	list := flag.Bool("list", false, "list the servers and scenarios and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: bench [flags]\n\n"+
			"plugloop's cross-backend benchmark: every plugloop backend against gnet, netpoll, Go's net and a bare epoll loop.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	var err error
	for _, p := range strings.Split(*relayProxies, ",") {
		if p = strings.TrimSpace(p); p != "" {
			s.relayProxies = append(s.relayProxies, p)
		}
	}
	if s.sizes, err = intList(*sizes); err == nil {
		s.conns, err = intList(*conns)
	}
	if err != nil || flag.NArg() > 0 || (cfg.load != loadUring && cfg.load != loadNet) || cfg.repeats < 0 || cfg.duration < 0 || cfg.warmup < 0 ||
		s.streamConns < 1 || s.churnClients < 1 || s.idleConns < 1 || s.slowConns < 1 || s.timerCount < 1 || len(s.relayProxies) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *list {
		for _, s := range knownServers() {
			if s.Skip != "" {
				fmt.Printf("%-18s (skipped: %s)\n", s.Name, s.Skip)
			} else if s.OptIn != "" {
				fmt.Printf("%-18s (only with -servers: %s)\n", s.Name, s.OptIn)
			} else {
				fmt.Println(s.Name)
			}
		}
		fmt.Println("\nscenarios:")
		for _, sc := range scenarios {
			optIn := ""
			if sc.OptIn {
				optIn = " (only with -scenarios)"
			}
			fmt.Printf("  %-12s %s%s\n", sc.Name, sc.Title, optIn)
		}
		return
	}
	if s.scenarios, err = selectScenarios(*scen); err == nil {
		err = selectServers(cfg, *servers)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	cfg.fdLimit = raiseFDLimit()
	setupPinning(cfg, *pin)
	setupLoad(cfg)
	straceSet := false
	flag.Visit(func(f *flag.Flag) { straceSet = straceSet || f.Name == "strace" })
	if path, err := exec.LookPath("strace"); err == nil && !straceSet && cfg.target == "" {
		cfg.straceFirst, cfg.stracePath = true, path
	}
	if cfg.strace {
		path, err := exec.LookPath("strace")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -strace: strace is not installed (Debian: apt-get install strace); running without it")
			cfg.strace = false
		}
		cfg.stracePath = path
	}

	if cfg.profileDir != "" {
		if err := os.MkdirAll(cfg.profileDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		if abs, err := filepath.Abs(cfg.profileDir); err == nil {
			cfg.profileDir = abs
		}
	}
	if *perf {
		path, err := exec.LookPath("perf")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -perf: perf is not installed (Debian: apt-get install linux-perf); running without it")
		}
		cfg.perfPath = path
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the bench at once
	}()
	rep := s.run(ctx)
	if cfg.json {
		printJSON(os.Stdout, rep)
	} else {
		printSuite(os.Stdout, rep)
	}
	if s.htmlPath != "" {
		if err := writeHTML(s.htmlPath, rep); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -html:", err)
		} else {
			fmt.Fprintln(os.Stderr, "bench: wrote", s.htmlPath)
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted")
		os.Exit(130)
	}
}

// selectServers resolves the -servers list against knownServers. A known
// server that cannot run here is kept, when asked for by name, to show its
// reason as an error row; by default it is only noted.
func selectServers(cfg *config, list string) error {
	known := knownServers()
	if strings.TrimSpace(list) == "" {
		for _, s := range known {
			switch {
			case s.OptIn != "":
			case s.Skip == "":
				cfg.servers = append(cfg.servers, s)
			default:
				cfg.skipped = append(cfg.skipped, s)
			}
		}
		return nil
	}
	cfg.serversChosen = true
	var names []string
	for _, s := range known {
		names = append(names, s.Name)
	}
	for _, w := range strings.Split(list, ",") {
		w = strings.TrimSpace(w)
		if w == "" {
			continue
		}
		i := slices.IndexFunc(known, func(s serverInfo) bool { return s.Name == w })
		if i < 0 {
			i = slices.IndexFunc(known, func(s serverInfo) bool { return s.Name == plugloopPrefix+w })
		}
		if i < 0 {
			return fmt.Errorf("unknown server %q (known: %s)", w, strings.Join(names, ", "))
		}
		if !slices.ContainsFunc(cfg.servers, func(s serverInfo) bool { return s.Name == known[i].Name }) {
			cfg.servers = append(cfg.servers, known[i])
		}
	}
	if len(cfg.servers) == 0 {
		return fmt.Errorf("-servers names no server")
	}
	return nil
}

// setupPinning gives the server children the first CPU this process may
// use and pins the load generator (this process) to the rest.
func setupPinning(cfg *config, pin bool) {
	cpus, err := affinity()
	switch {
	case !pin:
		cfg.pinNote = "not pinned (-pin=false)"
	case err != nil:
		cfg.pinNote = "not pinned: " + err.Error()
	case len(cpus) < 2:
		cfg.pinNote = fmt.Sprintf("not pinned: only %d CPU available", len(cpus))
	default:
		if err := pinProcess(cpus[1:]); err != nil {
			cfg.pinNote = "not pinned: " + err.Error()
			break
		}
		cfg.serverCPUs, cfg.clientCPUs = cpus[:1], cpus[1:]
		runtime.GOMAXPROCS(len(cfg.clientCPUs))
		cfg.pinNote = fmt.Sprintf("server on CPU %s, load generator on CPU %s",
			formatCPUs(cfg.serverCPUs), formatCPUs(cfg.clientCPUs))
	}
	cfg.clientProc = runtime.GOMAXPROCS(0)
}

// setupLoad settles the load generator: io_uring if asked for and
// available, else net.
func setupLoad(cfg *config) {
	const netNote = "net: a goroutine per connection, blocking Write then ReadFull"
	if cfg.load == loadNet {
		cfg.loadNote = netNote + " (-load net)"
		return
	}
	how, err := uringProbe()
	if err != nil {
		cfg.load = loadNet
		cfg.loadNote = netNote + "; io_uring unavailable (" + err.Error() + ")"
		fmt.Fprintf(os.Stderr, "bench: -load uring: io_uring unavailable (%v); using the net load generator, which costs about as much CPU per round trip as a server\n", err)
		return
	}
	wait := "a quarter of the connections' completions (at most 64)"
	if cfg.loadWait > 0 {
		wait = fmt.Sprintf("%d completions", cfg.loadWait)
	}
	cfg.loadNote = fmt.Sprintf("uring: one thread, all connections on one io_uring (%s), SEND linked to RECV per connection,\n"+
		"              waits for %s per io_uring_enter (-load-wait)", how, wait)
	// One more P than CPUs: the io_uring thread sits in io_uring_enter
	// most of the time, holding its P. With no P idle, sysmon would take
	// that P back from every wait that outlasts its 20 µs tick, handing
	// it to another thread, and so never back off: a fifth of the load
	// generator's CPU went to that churn. With an idle P it leaves
	// syscalls alone.
	runtime.GOMAXPROCS(cfg.clientProc + 1)
	cfg.clientProc = runtime.GOMAXPROCS(0)
}

// runPingPong measures every server at one size and connection count in
// cfg.repeats slices each, the servers taking turns slice by slice (see
// session), then makes the strace runs, a child each.
func runPingPong(ctx context.Context, cfg *config) *report {
	start := time.Now()
	// Each server's first slice pays its start, connections and warm-up;
	// the others a settle and the pause.
	first := cfg.warmup + cfg.duration + 300*time.Millisecond
	later := min(settle, cfg.warmup) + cfg.duration + 20*time.Millisecond
	est := time.Duration(len(cfg.servers)) * (first + time.Duration(cfg.repeats-1)*later)
	if cfg.strace {
		est += time.Duration(len(cfg.servers)) * (first + 200*time.Millisecond)
	}
	// As many sessions stay open as this process has descriptors for
	// their connections; beyond that the least recently measured one is
	// closed, and opened again (a new child) at its next slice.
	maxLive := sessionsFit(cfg)
	if maxLive < len(cfg.servers) {
		est = time.Duration(len(cfg.servers)*cfg.repeats) * first
		progress("  %d servers × %d runs (%v warm-up + %v each; a child per run: the fd limit has room for the connections of %d at once), about %v\n",
			len(cfg.servers), cfg.repeats, cfg.warmup, cfg.duration, maxLive, est.Round(time.Second))
	} else {
		progress("  %d servers × %d slices (%v warm-up, then %v settle + %v measured each; servers take turns every slice), about %v\n",
			len(cfg.servers), cfg.repeats, cfg.warmup, min(settle, cfg.warmup), cfg.duration, est.Round(time.Second))
	}
	sessions := map[string]*session{}
	var live []string // open sessions, least recently measured first
	var results map[string][]runResult
	closeSession := func(name string) {
		var res runResult
		sessions[name].close(&res)
		delete(sessions, name)
		live = slices.DeleteFunc(live, func(n string) bool { return n == name })
		if runs := results[name]; res.Error != "" && len(runs) > 0 && runs[len(runs)-1].Error == "" {
			runs[len(runs)-1].Error = res.Error // it stalled a connection at the end
		}
	}
	results = eachServer(ctx, cfg.servers, cfg.repeats, func(sv serverInfo, r int) runResult {
		if sv.Skip != "" {
			return runResult{Server: sv.Name, Repeat: r, Error: sv.Skip}
		}
		s := sessions[sv.Name]
		if s == nil {
			for len(live) >= maxLive {
				closeSession(live[0])
			}
			s = openSession(ctx, cfg, sv.Name, false)
			sessions[sv.Name] = s
		}
		live = append(slices.DeleteFunc(live, func(n string) bool { return n == sv.Name }), sv.Name)
		return s.measure(ctx, r)
	}, runResult.brief)
	for len(live) > 0 {
		closeSession(live[0])
	}
	straced := map[string]runResult{}
	if cfg.strace {
		for _, s := range cfg.servers {
			if ctx.Err() != nil || s.Skip != "" {
				continue
			}
			res := runOne(ctx, cfg, s.Name, -1, true)
			if ctx.Err() != nil {
				break
			}
			progress("  strace %-16s %s\n", s.Name, res.brief())
			straced[s.Name] = res
		}
	}
	return buildReport(cfg, results, straced, start, ctx.Err() != nil)
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format, args...)
}

func (r runResult) brief() string {
	if r.Error != "" {
		return "error: " + r.Error
	}
	s := fmt.Sprintf("%9.0f rt/s  %6.2f µs CPU/rt  %.2f csw/rt", r.RTPerSec, r.CPUPerRT, r.CSWPerRT)
	if r.Stats != nil {
		s += fmt.Sprintf("  %.2f syscalls/rt", float64(r.Stats.Syscalls)/r.StatsRoundTrips)
	}
	if r.OtherCPU >= 0 {
		s += fmt.Sprintf("  other processes %.0f%% CPU", r.OtherCPU)
	}
	if r.StealCPU > 0.5 {
		s += fmt.Sprintf(", steal %.0f%%", r.StealCPU)
	}
	if r.Perf != nil && r.PerfRoundTrips > 0 {
		s += fmt.Sprintf("  perf: %.2f syscalls/rt", float64(r.Perf.Total)/r.PerfRoundTrips)
	}
	if r.PerfError != "" {
		s += "  perf error: " + r.PerfError
	}
	if r.Strace != nil && r.LifeRoundTrips > 0 {
		s += fmt.Sprintf("  strace: %.2f syscalls/rt", float64(r.Strace.Total)/float64(r.LifeRoundTrips))
	}
	return s
}
