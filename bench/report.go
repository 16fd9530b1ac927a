package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// report is everything the bench prints, as text or as JSON.
type report struct {
	Conditions  conditions     `json:"conditions"`
	Servers     []serverReport `json:"servers"`
	Skipped     []skipNote     `json:"skipped,omitempty"`
	Interrupted bool           `json:"interrupted,omitempty"`
}

type conditions struct {
	GoVersion        string  `json:"go_version"`
	GnetVersion      string  `json:"gnet_version"`
	ServerGoMaxProcs int     `json:"server_gomaxprocs"`
	ClientGoMaxProcs int     `json:"client_gomaxprocs"`
	Pinning          string  `json:"pinning"`
	LoadGenerator    string  `json:"load_generator"`
	CPUs             int     `json:"cpus"`
	Conns            int     `json:"conns"`
	PayloadBytes     int     `json:"payload_bytes"`
	WarmupSeconds    float64 `json:"warmup_seconds"`
	DurationSeconds  float64 `json:"duration_seconds"`
	Repeats          int     `json:"repeats"`
	Kernel           string  `json:"kernel"`
	Date             string  `json:"date"`
	ElapsedSeconds   float64 `json:"elapsed_seconds"`
	Strace           bool    `json:"strace"`
	Perf             bool    `json:"perf"`
}

type skipNote struct {
	Server string `json:"server"`
	Reason string `json:"reason"`
}

// serverReport summarises one server's runs: medians over the repeats.
type serverReport struct {
	Name         string  `json:"server"`
	Error        string  `json:"error,omitempty"`  // every run failed
	Failed       int     `json:"failed,omitempty"` // runs that failed
	RTPerSec     float64 `json:"round_trips_per_sec"`
	CPUPerRT     float64 `json:"server_cpu_us_per_rt"`
	CPUSpreadPct float64 `json:"server_cpu_spread_pct"` // half the min-max range, % of the median
	CPUVsEpoll   float64 `json:"server_cpu_vs_epoll,omitempty"`
	ClientCPU    float64 `json:"client_cpu_us_per_rt"`
	PeakRSSMB    float64 `json:"server_peak_rss_mb"`
	CSWPerRT     float64 `json:"server_csw_per_rt"`
	// OtherCPU is the most CPU (% of one CPU) other processes used during
	// any of the runs; -1 where unknown.
	OtherCPU float64 `json:"other_cpu_pct_max"`
	// SyscallsPerRT counts the plugloop core's system calls (Stats); 0 for
	// peers, whose calls only strace can count.
	SyscallsPerRT float64    `json:"syscalls_per_rt,omitempty"`
	PerRT         *statsRate `json:"stats_per_rt,omitempty"`
	// With -perf: every system call of the server per round trip over
	// the measured window (median), and by name (all runs together).
	PerfSyscallsPerRT float64            `json:"perf_syscalls_per_rt,omitempty"`
	PerfPerRT         map[string]float64 `json:"perf_per_rt,omitempty"`
	PerfError         string             `json:"perf_error,omitempty"`
	// The strace run, if any: syscalls per round trip over the child's life.
	StraceSyscallsPerRT float64            `json:"strace_syscalls_per_rt,omitempty"`
	StracePerRT         map[string]float64 `json:"strace_per_rt,omitempty"`
	StraceRun           *runResult         `json:"strace_run,omitempty"`
	Runs                []runResult        `json:"runs"`
}

// statsRate is core.Stats divided by round trips.
type statsRate struct {
	Waits           float64 `json:"waits"`
	InterestChanges float64 `json:"interest_changes"`
	Wakes           float64 `json:"wakes"`
	Reads           float64 `json:"reads"`
	Writes          float64 `json:"writes"`
	Accepts         float64 `json:"accepts"`
	Closes          float64 `json:"closes"`
	Dispatches      float64 `json:"dispatches"`
	ForcedServices  float64 `json:"forced_services"`
	TimersFired     float64 `json:"timers_fired"`
}

func buildReport(cfg *config, results map[string][]runResult, straced map[string]runResult, start time.Time, interrupted bool) *report {
	r := &report{
		Conditions: conditions{
			GoVersion:        runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
			GnetVersion:      moduleVersion("github.com/panjf2000/gnet/v2"),
			ServerGoMaxProcs: 1,
			ClientGoMaxProcs: cfg.clientProc,
			Pinning:          cfg.pinNote,
			LoadGenerator:    cfg.loadNote,
			CPUs:             runtime.NumCPU(),
			Conns:            cfg.conns,
			PayloadBytes:     cfg.size,
			WarmupSeconds:    cfg.warmup.Seconds(),
			DurationSeconds:  cfg.duration.Seconds(),
			Repeats:          cfg.repeats,
			Kernel:           kernel(),
			Date:             start.Format(time.RFC3339),
			ElapsedSeconds:   time.Since(start).Round(100 * time.Millisecond).Seconds(),
			Strace:           cfg.strace,
			Perf:             cfg.perfPath != "",
		},
		Interrupted: interrupted,
	}
	for _, s := range cfg.skipped {
		r.Skipped = append(r.Skipped, skipNote{s.Name, s.Skip})
	}
	for _, s := range cfg.servers {
		runs, ok := results[s.Name]
		if !ok {
			continue // interrupted before it ran
		}
		sr := summarize(s.Name, runs)
		if st, ok := straced[s.Name]; ok {
			sr.StraceRun = &st
			if st.Error == "" && st.Strace != nil && st.LifeRoundTrips > 0 {
				n := float64(st.LifeRoundTrips)
				sr.StraceSyscallsPerRT = float64(st.Strace.Total) / n
				sr.StracePerRT = map[string]float64{}
				for name, c := range st.Strace.Calls {
					sr.StracePerRT[name] = float64(c) / n
				}
			}
		}
		r.Servers = append(r.Servers, sr)
	}
	// The ratio column: CPU per round trip relative to plugloop's epoll.
	if i := slices.IndexFunc(r.Servers, func(s serverReport) bool { return s.Name == plugloopPrefix+"epoll" }); i >= 0 && r.Servers[i].Error == "" {
		base := r.Servers[i].CPUPerRT
		for j := range r.Servers {
			if r.Servers[j].Error == "" {
				r.Servers[j].CPUVsEpoll = r.Servers[j].CPUPerRT / base
			}
		}
	}
	return r
}

func summarize(name string, runs []runResult) serverReport {
	sr := serverReport{Name: name, Runs: runs}
	var ok []runResult
	for _, run := range runs {
		if run.Error != "" {
			sr.Failed++
			if sr.Error == "" {
				sr.Error = run.Error
			}
			continue
		}
		ok = append(ok, run)
	}
	if len(ok) == 0 {
		return sr
	}
	if sr.Failed > 0 {
		sr.Error = fmt.Sprintf("%d of %d runs failed: %s", sr.Failed, len(runs), sr.Error)
	} else {
		sr.Error = ""
	}
	get := func(f func(runResult) float64) []float64 {
		v := make([]float64, len(ok))
		for i, run := range ok {
			v[i] = f(run)
		}
		return v
	}
	sr.RTPerSec = median(get(func(r runResult) float64 { return r.RTPerSec }))
	cpu := get(func(r runResult) float64 { return r.CPUPerRT })
	sr.CPUPerRT = median(cpu)
	sr.CPUSpreadPct = (slices.Max(cpu) - slices.Min(cpu)) / 2 / sr.CPUPerRT * 100
	sr.ClientCPU = median(get(func(r runResult) float64 { return r.ClientCPU }))
	sr.PeakRSSMB = slices.Max(get(func(r runResult) float64 { return float64(r.MaxRSSKB) / 1024 }))
	sr.CSWPerRT = median(get(func(r runResult) float64 { return r.CSWPerRT }))
	sr.OtherCPU = slices.Max(get(func(r runResult) float64 { return r.OtherCPU }))
	var perfRates []float64
	perfSum, perfRTs := map[string]uint64{}, 0.0
	for _, r := range ok {
		if r.PerfError != "" && sr.PerfError == "" {
			sr.PerfError = r.PerfError
		}
		if r.Perf == nil || r.PerfRoundTrips <= 0 {
			continue
		}
		perfRates = append(perfRates, float64(r.Perf.Total)/r.PerfRoundTrips)
		for k, v := range r.Perf.Calls {
			perfSum[k] += v
		}
		perfRTs += r.PerfRoundTrips
	}
	if len(perfRates) > 0 {
		sr.PerfSyscallsPerRT = median(perfRates)
		sr.PerfPerRT = map[string]float64{}
		for k, v := range perfSum {
			sr.PerfPerRT[k] = float64(v) / perfRTs
		}
	}
	if ok[0].Stats != nil {
		sr.SyscallsPerRT = median(get(func(r runResult) float64 {
			if r.Stats == nil {
				return 0
			}
			return float64(r.Stats.Syscalls) / r.RoundTrips
		}))
		var sum Stats
		var rts float64
		for _, r := range ok {
			if r.Stats == nil {
				continue
			}
			s := r.Stats
			sum.Waits += s.Waits
			sum.InterestChanges += s.InterestChanges
			sum.Wakes += s.Wakes
			sum.Reads += s.Reads
			sum.Writes += s.Writes
			sum.Accepts += s.Accepts
			sum.Closes += s.Closes
			sum.Dispatches += s.Dispatches
			sum.ForcedServices += s.ForcedServices
			sum.TimersFired += s.TimersFired
			rts += r.RoundTrips
		}
		sr.PerRT = &statsRate{
			Waits: float64(sum.Waits) / rts, InterestChanges: float64(sum.InterestChanges) / rts,
			Wakes: float64(sum.Wakes) / rts, Reads: float64(sum.Reads) / rts, Writes: float64(sum.Writes) / rts,
			Accepts: float64(sum.Accepts) / rts, Closes: float64(sum.Closes) / rts,
			Dispatches: float64(sum.Dispatches) / rts, ForcedServices: float64(sum.ForcedServices) / rts,
			TimersFired: float64(sum.TimersFired) / rts,
		}
	}
	return sr
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				if m.Replace != nil {
					return m.Replace.Version + " (replaced)"
				}
				return m.Version
			}
		}
	}
	return "unknown"
}

func printJSON(w io.Writer, r *report) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}

// noisyPct is the CPU use of other processes, in % of one CPU, above which
// a run is flagged as disturbed.
const noisyPct = 10

// spreadPct is the ± of CPU per round trip between repeats above which the
// median is flagged as fragile.
const spreadPct = 5

// printTable writes the human-readable report.
func printTable(w io.Writer, r *report) {
	c := r.Conditions
	fmt.Fprintf(w, "\nplugloop bench: %d-byte echo ping-pong over loopback, %d connections; medians of %d × %gs\n\n",
		c.PayloadBytes, c.Conns, c.Repeats, c.DurationSeconds)

	strace := c.Strace
	head := []string{"server", "round trips/s", "CPU µs/rt", "±", "CPU/rt vs epoll", "syscalls/rt", "ctx sw/rt", "peak RSS MB", "others %CPU"}
	perf := r.Conditions.Perf
	if perf {
		head = append(head, "perf syscalls/rt")
	}
	if strace {
		head = append(head, "strace syscalls/rt")
	}
	rows := [][]string{head}
	var errs []string
	noisy := false
	for _, s := range r.Servers {
		if s.RTPerSec == 0 {
			rows = append(rows, []string{s.Name, "error"})
			errs = append(errs, fmt.Sprintf("%s: %s", s.Name, s.Error))
			continue
		}
		row := []string{
			s.Name,
			thousands(s.RTPerSec),
			fmt.Sprintf("%.2f", s.CPUPerRT),
			fmt.Sprintf("%.1f%%", s.CPUSpreadPct),
			dash(s.CPUVsEpoll, "%.2fx"),
			dash(s.SyscallsPerRT, "%.2f"),
			fmt.Sprintf("%.2f", s.CSWPerRT),
			fmt.Sprintf("%.1f", s.PeakRSSMB),
			"?",
		}
		if s.OtherCPU >= 0 {
			row[len(row)-1] = fmt.Sprintf("%.0f", s.OtherCPU)
			if s.OtherCPU > noisyPct {
				noisy = true
			}
		}
		if perf {
			row = append(row, dash(s.PerfSyscallsPerRT, "%.2f"))
		}
		if strace {
			row = append(row, dash(s.StraceSyscallsPerRT, "%.2f"))
		}
		if s.Error != "" {
			errs = append(errs, fmt.Sprintf("%s: %s", s.Name, s.Error))
		}
		rows = append(rows, row)
	}
	writeColumns(w, rows)
	for _, e := range errs {
		fmt.Fprintf(w, "  ! %s\n", e)
	}
	var unsteady []string
	for _, s := range r.Servers {
		if s.RTPerSec > 0 && s.CPUSpreadPct > spreadPct {
			unsteady = append(unsteady, s.Name)
		}
	}
	if len(unsteady) > 0 {
		fmt.Fprintf(w, "  ! CPU/rt of %s varied by more than ±%d%% between repeats: a median of few runs is fragile; use more -repeats\n",
			strings.Join(unsteady, ", "), spreadPct)
	}
	if noisy {
		fmt.Fprintf(w, "  ! other processes used more than %d%% of a CPU during some runs: those figures are disturbed; rerun on a quiet machine\n", noisyPct)
	}

	fmt.Fprintf(w, "\nCPU µs/rt: the server child's user+sys CPU time (getrusage) over the measured window per round trip; ± is half the\n"+
		"min–max range over the repeats; ctx sw/rt: the server's context switches (getrusage), i.e. how often it slept;\n"+
		"others %%CPU: the most CPU any other process used during a run (/proc/stat), %% of one CPU.\n"+
		"syscalls/rt: the plugloop core's own count (core.Context.Stats); - = not counted")
	if perf {
		fmt.Fprintf(w, ";\nperf syscalls/rt: every system call of the server process over the measured window (perf stat, syscall tracepoints)")
	}
	if strace {
		fmt.Fprintf(w, ";\nstrace syscalls/rt: every system call of the server process (strace -c -f) over its life, per round trip,\n"+
			"in a separate traced run; tracing slows the server so much that it batches far more per wait than untraced")
	}
	if !perf && !strace {
		fmt.Fprintf(w, "\n(-perf or -strace count every server's system calls)")
	}
	fmt.Fprintln(w, ".")

	var client, server []float64
	for _, s := range r.Servers {
		if s.RTPerSec > 0 {
			client = append(client, s.ClientCPU)
			server = append(server, s.CPUPerRT)
		}
	}
	if len(client) > 0 {
		lc, least := median(client), slices.Min(server)
		if lc < least*0.8 {
			fmt.Fprintf(w, "The load generator used %.1f µs CPU per round trip (median), less than any server (%.1f): the servers limit round trips/s.\n", lc, least)
		} else {
			fmt.Fprintf(w, "The load generator used %.1f µs CPU per round trip (median), about as much as a server (%.1f): it, not the server, may limit round trips/s.\n", lc, least)
		}
	}

	var per []string
	for _, s := range r.Servers {
		if p := s.PerRT; p != nil && s.RTPerSec > 0 {
			per = append(per, fmt.Sprintf("  %-16s read %.2f  write %.2f  wait %.2f  interest %.2f  wake %.2f  accept+close %.2f | callbacks %.2f  forced passes %.2f",
				s.Name, p.Reads, p.Writes, p.Waits, p.InterestChanges, p.Wakes, p.Accepts+p.Closes, p.Dispatches, p.ForcedServices))
		}
	}
	if len(per) > 0 {
		fmt.Fprintf(w, "\nplugloop core counters per round trip (Stats; waits/rt is 1 / round trips per wait, so it falls as the server saturates):\n%s\n", strings.Join(per, "\n"))
	}
	if perf {
		fmt.Fprintf(w, "\nall system calls per round trip (perf):\n")
		for _, s := range r.Servers {
			switch {
			case s.PerfPerRT != nil:
				fmt.Fprintf(w, "  %-16s %s\n", s.Name, topCalls(s.PerfPerRT, 7))
			case s.PerfError != "":
				fmt.Fprintf(w, "  %-16s perf error: %s\n", s.Name, s.PerfError)
			}
		}
	}
	if strace {
		fmt.Fprintf(w, "\nstrace runs (one per server, traced: CPU and rate NOT comparable with the table):\n")
		for _, s := range r.Servers {
			st := s.StraceRun
			if st == nil {
				continue
			}
			if st.Error != "" {
				fmt.Fprintf(w, "  %-16s error: %s\n", s.Name, st.Error)
				continue
			}
			fmt.Fprintf(w, "  %-16s %s rt/s, %.2f µs CPU/rt; per rt: %s\n", s.Name, thousands(st.RTPerSec), st.CPUPerRT, topCalls(s.StracePerRT, 6))
		}
	}

	fmt.Fprintf(w, "\nconditions:\n")
	kv := [][2]string{
		{"go", c.GoVersion + ", gnet " + c.GnetVersion},
		{"GOMAXPROCS", fmt.Sprintf("%d in every server child (plugloop; gnet with one event loop, multicore off; net too, for fairness); load generator %d", c.ServerGoMaxProcs, c.ClientGoMaxProcs)},
		{"pinning", fmt.Sprintf("%s (%d CPUs)", c.Pinning, c.CPUs)},
		{"load", fmt.Sprintf("%d connections, %d B payload, one message in flight per connection (closed loop); echoes checked byte for byte", c.Conns, c.PayloadBytes)},
		{"load gen", c.LoadGenerator},
		{"timing", fmt.Sprintf("%gs warm-up + %gs measured per run; repeats: %d, interleaved; medians; %gs in all", c.WarmupSeconds, c.DurationSeconds, c.Repeats, c.ElapsedSeconds)},
		{"servers", "plugloop/* = internal/echo (lws style: RAW_RX buffers, CallbackOnWritable, one Write per RAW_WRITEABLE);\n" +
			"              gnet = gnet.Run, OnTraffic writes back Next(-1); net = goroutine per connection, 32 KiB buffer"},
		{"kernel", c.Kernel},
		{"date", c.Date},
	}
	for _, p := range kv {
		fmt.Fprintf(w, "  %-11s %s\n", p[0], p[1])
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintf(w, "  skipped:\n")
		for _, s := range r.Skipped {
			fmt.Fprintf(w, "    %-16s %s\n", s.Server, s.Reason)
		}
	}
	if r.Interrupted {
		fmt.Fprintf(w, "\ninterrupted: results are partial\n")
	}
}

// writeColumns prints rows as columns: the first left-aligned, the rest
// right-aligned. A row shorter than the header spans the rest.
func writeColumns(w io.Writer, rows [][]string) {
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		if len(row) < len(width) {
			continue
		}
		for i, cell := range row {
			width[i] = max(width[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, cell := range row {
			pad := strings.Repeat(" ", max(width[i]-utf8.RuneCountInString(cell), 0))
			switch {
			case i == 0:
				b.WriteString(cell + pad)
			case len(row) < len(width):
				b.WriteString("  " + cell)
			default:
				b.WriteString("  " + pad + cell)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

func dash(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// thousands formats a rate as an integer with thousands separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, d := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	return b.String()
}

// topCalls lists the n most frequent system calls per round trip.
func topCalls(per map[string]float64, n int) string {
	type kv struct {
		name string
		v    float64
	}
	var all []kv
	for k, v := range per {
		all = append(all, kv{k, v})
	}
	slices.SortFunc(all, func(a, b kv) int { return cmp.Or(cmp.Compare(b.v, a.v), strings.Compare(a.name, b.name)) })
	var out []string
	for i, e := range all {
		if i == n {
			break
		}
		out = append(out, fmt.Sprintf("%s %.2f", e.name, e.v))
	}
	return strings.Join(out, ", ")
}
