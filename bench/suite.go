//go:build unix

package main

// The suite: scenarios, each a set of tables and charts, run in order with
// a progress line each, printed as text, JSON or HTML.

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// suite is one invocation's plan.
type suite struct {
	cfg          *config
	full         bool
	scenarios    []scenario
	sizes        []int // -sizes, -conns: nil unless given
	conns        []int
	streamConns  int
	churnClients int
	idleConns    int
	slowConns    int
	// relayProxies: the relay scenario's proxies (-relay-proxies).
	relayProxies []string
	slowDur      time.Duration // 0: the default
	arrivals     int           // arrival: new connections per run; 0: arrivalProbes
	timerCount   int
	htmlPath     string
	start        time.Time
	// pingpong keeps each ping-pong configuration's report, for the
	// abstraction scenario to reuse.
	pingpong map[[2]int]*report
	unreach  []string
}

// scenario is one kind of measurement.
type scenario struct {
	Name  string
	Title string
	run   func(ctx context.Context, s *suite) *scenarioResult
	// OptIn: it runs only when -scenarios names it, not by default (nor
	// with -full), to keep those runs' length.
	OptIn bool
}

var scenarios = []scenario{
	{"pingpong", "closed-loop echo ping-pong: server CPU and syscalls per round trip", runPingPongScenario, false},
	{"abstraction", "the same echo on every plugloop backend and a bare epoll loop: what the abstraction costs", runAbstraction, false},
	{"stream", "streaming (pipelined) echo: MB/s and server CPU per MB", runStream, false},
	{"churn", "connection churn: one echo per connection, server CPU per connection", runChurn, false},
	{"arrival", "new connections beside busy ones: dial to first echo", runArrival, false},
	{"idle", "idle connections: server RSS per connection", runIdle, false},
	{"slow", "slow consumer: fast writers, slow readers; does server memory plateau?", runSlow, false},
	{"timers", "timers: schedule and cancel a million, fire order", runTimers, false},
	{"wakeup", "cross-goroutine wakeups: Post and CancelService latency and rate", runWakeup, false},
	{"relay", "TCP proxy in front of an echo upstream: core.Conn.RelayTo, a callback proxy and io.Copy, proxy CPU and syscalls per MB", runRelay, true},
}

func scenarioNames() []string {
	var n []string
	for _, s := range scenarios {
		n = append(n, s.Name)
	}
	return n
}

func selectScenarios(list string) ([]scenario, error) {
	if strings.TrimSpace(list) == "" {
		var out []scenario
		for _, s := range scenarios {
			if !s.OptIn {
				out = append(out, s)
			}
		}
		return out, nil
	}
	var out []scenario
	for _, w := range strings.Split(list, ",") {
		w = strings.TrimSpace(w)
		i := slices.IndexFunc(scenarios, func(s scenario) bool { return s.Name == w })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", w, strings.Join(scenarioNames(), ", "))
		}
		out = append(out, scenarios[i])
	}
	slices.SortStableFunc(out, func(a, b scenario) int { return scenarioIndex(a.Name) - scenarioIndex(b.Name) })
	return slices.CompactFunc(out, func(a, b scenario) bool { return a.Name == b.Name }), nil
}

func scenarioIndex(name string) int {
	return slices.IndexFunc(scenarios, func(s scenario) bool { return s.Name == name })
}

func intList(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// ---- results ----

// suiteReport is everything the bench prints.
type suiteReport struct {
	Conditions  conditions        `json:"conditions"`
	Scenarios   []*scenarioResult `json:"scenarios"`
	Skipped     []skipNote        `json:"skipped,omitempty"`
	Unreached   []string          `json:"unreached,omitempty"` // what could not be measured, and why
	Interrupted bool              `json:"interrupted,omitempty"`
}

// scenarioResult is one scenario's tables and charts, and its raw data.
type scenarioResult struct {
	Name     string   `json:"name"`
	Title    string   `json:"title"`
	Measures string   `json:"measures"` // what was measured, how
	Tables   []table  `json:"tables"`
	Charts   []chart  `json:"charts,omitempty"`
	Notes    []string `json:"notes,omitempty"`
	Data     any      `json:"data,omitempty"`
	Seconds  float64  `json:"seconds"`
}

type table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
	Notes  []string   `json:"notes,omitempty"`
}

// failed adds the row of a server whose run failed, and why, as a note.
func (t *table) failed(name, why string) {
	t.Rows = append(t.Rows, []string{name, "error"})
	t.Notes = append(t.Notes, "! "+name+": "+why)
}

// chart is a bar chart (Bars) or a line chart (Series) for the HTML
// report.
type chart struct {
	Title       string   `json:"title"`
	Unit        string   `json:"unit"`
	LowerBetter bool     `json:"lower_is_better,omitempty"`
	Bars        []bar    `json:"bars,omitempty"`
	Series      []series `json:"series,omitempty"`
	XUnit       string   `json:"x_unit,omitempty"`
}

type bar struct {
	Label string  `json:"label"`
	Value float64 `json:"value"`
	Text  string  `json:"text,omitempty"` // shown instead of the value
}

type series struct {
	Label string    `json:"label"`
	X     []float64 `json:"x"`
	Y     []float64 `json:"y"`
}

// run runs the selected scenarios in order.
func (s *suite) run(ctx context.Context) *suiteReport {
	s.start = time.Now()
	s.pingpong = map[[2]int]*report{}
	rep := &suiteReport{}
	for i, sc := range s.scenarios {
		if ctx.Err() != nil {
			break
		}
		progress("[%d/%d %s, %v elapsed] %s\n", i+1, len(s.scenarios), sc.Name, time.Since(s.start).Round(time.Second), sc.Title)
		t0 := time.Now()
		r := sc.run(ctx, s)
		if r == nil {
			continue
		}
		r.Name, r.Title, r.Seconds = sc.Name, sc.Title, time.Since(t0).Round(100*time.Millisecond).Seconds()
		rep.Scenarios = append(rep.Scenarios, r)
	}
	rep.Conditions = s.conditions()
	for _, sv := range s.cfg.skipped {
		rep.Skipped = append(rep.Skipped, skipNote{sv.Name, sv.Skip})
	}
	rep.Unreached = s.unreach
	rep.Interrupted = ctx.Err() != nil
	return rep
}

func (s *suite) conditions() conditions {
	cfg := s.cfg
	return conditions{
		GoVersion:        runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		GnetVersion:      moduleVersion("github.com/panjf2000/gnet/v2"),
		NetpollVersion:   moduleVersion("github.com/cloudwego/netpoll"),
		ServerGoMaxProcs: 1,
		ClientGoMaxProcs: cfg.clientProc,
		Pinning:          cfg.pinNote,
		LoadGenerator:    cfg.loadNote,
		CPUs:             runtime.NumCPU(),
		FDLimit:          cfg.fdLimit,
		WarmupSeconds:    cfg.warmup.Seconds(),
		DurationSeconds:  s.duration().Seconds(),
		Full:             s.full,
		Target:           cfg.target,
		Kernel:           kernel(),
		Date:             s.start.Format(time.RFC3339),
		ElapsedSeconds:   time.Since(s.start).Round(100 * time.Millisecond).Seconds(),
		Strace:           cfg.strace,
		Perf:             cfg.perfPath != "",
	}
}

// duration is the measured time per server and repeat.
func (s *suite) duration() time.Duration { return s.measured(2*time.Second, 600*time.Millisecond) }

// measured is -duration if it was given, else full with -full and dflt
// without.
func (s *suite) measured(full, dflt time.Duration) time.Duration {
	switch {
	case s.cfg.duration > 0:
		return s.cfg.duration
	case s.full:
		return full
	}
	return dflt
}

// sliceDuration is the measured time of a ping-pong slice: short, so that
// the servers of a table take turns often (see session).
func (s *suite) sliceDuration() time.Duration {
	// On this project's VM, in tables of nine servers, twelve slices of
	// 100 ms put plugloop/poll at 0.97–1.01× epoll in four runs, eight of
	// 150 ms at 0.93–1.04× in eight, four of 300 ms at 0.94–1.07× in
	// four; in five runs alternated with five of the former default
	// (three runs of 600 ms, each its own child), 0.98–1.02× against
	// 0.94–1.20×.
	dflt := 100 * time.Millisecond
	if s.cfg.perfPath != "" {
		// perf switches its counters on one by one: over 150 ms the
		// skew misplaced a third of the calls.
		dflt = 600 * time.Millisecond
	}
	return s.measured(500*time.Millisecond, dflt)
}

// slices is how many slices each server of a ping-pong table gets.
func (s *suite) slices() int {
	if s.cfg.repeats > 0 {
		return s.cfg.repeats
	}
	return 12
}

// repeats is how many runs each server gets in the scenarios other than
// ping-pong.
func (s *suite) repeats() int {
	switch {
	case s.cfg.repeats > 0:
		return s.cfg.repeats
	case s.full:
		// A median of two is their mean, which one noisy run drags.
		return 3
	}
	return 1
}

// servers returns the selected servers, or, for scenarios that need the
// server's own process, none with a -target.
func (s *suite) servers() []serverInfo {
	if s.cfg.target != "" {
		return []serverInfo{{Name: targetName}}
	}
	return s.cfg.servers
}

func (s *suite) unreachable(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.unreach = append(s.unreach, msg)
	progress("  ! %s\n", msg)
}

// eachServer runs f for every server, repeats interleaved, every other
// round in reverse order (A B C, C B A, A B C…), printing a progress line
// per run. A steady drift in the machine's speed then favours no server
// over a pair of rounds, and a comparison between two servers can pair
// their runs of the same round (see pairedRatio).
func eachServer[T any](ctx context.Context, servers []serverInfo, repeats int, f func(sv serverInfo, rep int) T, brief func(T) string) map[string][]T {
	out := map[string][]T{}
	order := slices.Clone(servers)
	for r := range repeats {
		for _, sv := range order {
			if ctx.Err() != nil {
				return out
			}
			v := f(sv, r)
			if ctx.Err() != nil {
				return out // interrupted: incomplete, not failed
			}
			progress("  %d/%d %-17s %s\n", r+1, repeats, sv.Name, brief(v))
			out[sv.Name] = append(out[sv.Name], v)
		}
		slices.Reverse(order)
	}
	return out
}

// ---- text output ----

func printSuite(w io.Writer, r *suiteReport) {
	c := r.Conditions
	fmt.Fprintf(w, "\nplugloop bench, %s — %s, %d CPUs, %s\n", c.Date, c.GoVersion, c.CPUs, c.Kernel)
	for _, sc := range r.Scenarios {
		fmt.Fprintf(w, "\n== %s: %s (%gs)\n", sc.Name, sc.Title, sc.Seconds)
		if sc.Measures != "" {
			fmt.Fprintf(w, "%s\n", wrap(sc.Measures, 110, ""))
		}
		for _, t := range sc.Tables {
			if t.Title != "" {
				fmt.Fprintf(w, "\n%s\n", t.Title)
			} else {
				fmt.Fprintln(w)
			}
			writeColumns(w, append([][]string{t.Header}, t.Rows...))
			for _, n := range t.Notes {
				fmt.Fprintf(w, "%s\n", wrap(n, 110, "  "))
			}
		}
		for _, n := range sc.Notes {
			fmt.Fprintf(w, "%s\n", wrap(n, 110, ""))
		}
	}
	fmt.Fprintf(w, "\n== conditions\n")
	for _, p := range c.pairs() {
		fmt.Fprintf(w, "  %-11s %s\n", p[0], p[1])
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintf(w, "  skipped:\n")
		for _, s := range r.Skipped {
			fmt.Fprintf(w, "    %-16s %s\n", s.Server, s.Reason)
		}
	}
	if len(r.Unreached) > 0 {
		fmt.Fprintf(w, "  not reached:\n")
		for _, u := range r.Unreached {
			fmt.Fprintf(w, "    %s\n", u)
		}
	}
	if r.Interrupted {
		fmt.Fprintf(w, "\ninterrupted: results are partial\n")
	}
}

// wrap breaks text into lines of at most width runes, each prefixed.
func wrap(text string, width int, prefix string) string {
	var lines []string
	for _, para := range strings.Split(text, "\n") {
		line := prefix
		for _, word := range strings.Fields(para) {
			if len(line) > len(prefix) && len(line)+1+len(word) > width {
				lines = append(lines, line)
				line = prefix + "  "
			}
			if len(line) > len(prefix) && !strings.HasSuffix(line, "  ") {
				line += " "
			}
			line += word
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

func (c conditions) pairs() [][2]string {
	p := [][2]string{
		{"go", c.GoVersion + ", gnet " + c.GnetVersion + ", netpoll " + c.NetpollVersion},
		{"GOMAXPROCS", fmt.Sprintf("%d in every server child (plugloop; gnet with one event loop, multicore off; netpoll with one loop; net too, for fairness); load generator %d", c.ServerGoMaxProcs, c.ClientGoMaxProcs)},
		{"pinning", fmt.Sprintf("%s (%d CPUs)", c.Pinning, c.CPUs)},
		{"fd limit", fmt.Sprintf("%d per process (RLIMIT_NOFILE, soft raised to hard in the bench and every child)", c.FDLimit)},
		{"load gen", c.LoadGenerator},
		{"timing", fmt.Sprintf("ping-pong: one child per server, measured in slices (see each table), servers taking turns slice by slice; "+
			"other scenarios: %gs warm-up + %gs measured per run unless they say otherwise, repeats interleaved, every other round reversed; medians; %gs in all",
			c.WarmupSeconds, c.DurationSeconds, c.ElapsedSeconds)},
		{"servers", "plugloop/* = internal/echo (lws style: RAW_RX buffers, CallbackOnWritable, one Write per RAW_WRITEABLE, rx paused past 64 KiB)\n" +
			"              on each backend (foreign: hosted by the child's own unix.Poll loop via foreign.PollSet; gnet, netpoll: plugloop's adapters);\n" +
			"              bare-epoll = a minimal level-triggered epoll loop in x/sys calls; gnet = gnet.Run, OnTraffic writes back Next(-1);\n" +
			"              netpoll = netpoll.NewEventLoop, OnRequest: Next(Len) → WriteBinary → Flush; net = goroutine per connection, 32 KiB buffer"},
		{"kernel", c.Kernel},
		{"date", c.Date},
	}
	if c.Target != "" {
		p = append(p, [2]string{"target", c.Target + " (external server: no server CPU, RSS or syscall figures)"})
	}
	if c.Full {
		p = append(p, [2]string{"suite", "-full"})
	}
	return p
}
