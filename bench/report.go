//go:build unix

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
	NetpollVersion   string  `json:"netpoll_version,omitempty"`
	FDLimit          uint64  `json:"fd_limit,omitempty"`
	Full             bool    `json:"full,omitempty"`
	Target           string  `json:"target,omitempty"`
	Conns            int     `json:"conns,omitempty"`
	PayloadBytes     int     `json:"payload_bytes,omitempty"`
	WarmupSeconds    float64 `json:"warmup_seconds"`
	DurationSeconds  float64 `json:"duration_seconds"`
	Repeats          int     `json:"repeats,omitempty"`
	// ChildPerRun: the fd limit had no room for every server's
	// connections at once, so each run started a child of its own.
	ChildPerRun    bool    `json:"child_per_run,omitempty"`
	Kernel         string  `json:"kernel"`
	Date           string  `json:"date"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	Strace         bool    `json:"strace"`
	Perf           bool    `json:"perf"`
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
	CPUSpreadPct float64 `json:"server_cpu_spread_pct"` // half the interquartile range, % of the median
	CPUVsEpoll   float64 `json:"server_cpu_vs_epoll,omitempty"`
	// VsEpollSpreadPct is half the interquartile range of the rounds'
	// ratios to plugloop/epoll, in % of CPUVsEpoll.
	VsEpollSpreadPct float64 `json:"server_cpu_vs_epoll_spread_pct,omitempty"`
	// CPUVsEngine is an adapter's CPU per round trip against its engine's
	// own server (plugloop/gnet against gnet), paired like CPUVsEpoll.
	CPUVsEngine float64 `json:"server_cpu_vs_engine,omitempty"`
	ClientCPU   float64 `json:"client_cpu_us_per_rt"`
	PeakRSSMB   float64 `json:"server_peak_rss_mb"`
	CSWPerRT    float64 `json:"server_csw_per_rt"`
	// OtherCPU is the CPU (% of one CPU) other processes used over all
	// the runs together; -1 where unknown.
	OtherCPU float64 `json:"other_cpu_pct"`
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
			ChildPerRun:      len(cfg.servers) > 0 && sessionsFit(cfg) < len(cfg.servers),
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
	if i := slices.IndexFunc(r.Servers, func(s serverReport) bool { return s.Name == plugloopPrefix+"epoll" }); i >= 0 {
		base := r.Servers[i].Runs
		for j := range r.Servers {
			v := pairs(r.Servers[j].Runs, base, ratio)
			if m := median(v); m > 0 {
				r.Servers[j].CPUVsEpoll = m
				r.Servers[j].VsEpollSpreadPct = (quantile(v, 0.75) - quantile(v, 0.25)) / 2 / m * 100
			}
		}
	}
	for j, s := range r.Servers {
		engine, ok := strings.CutPrefix(s.Name, plugloopPrefix)
		if i := slices.IndexFunc(r.Servers, func(s serverReport) bool { return s.Name == engine }); ok && i >= 0 {
			r.Servers[j].CPUVsEngine = paired(s.Runs, r.Servers[i].Runs, ratio)
		}
	}
	return r
}

// paired compares two servers' CPU per round trip run by run: the median,
// over the rounds in which both ran without error, of f(run, base's run
// of that round); 0 if there is no such round. The two runs of a round
// are seconds apart, and rounds alternate their order (see eachServer),
// so a change in the machine's speed from one round to the next (this
// VM's kernel paths speed up and slow down by 20–30% at times) stays out
// of the comparison, where a ratio of medians would take one server's
// figure from before such a change and the other's from after it.
func paired(runs, base []runResult, f func(run, base float64) float64) float64 {
	return median(pairs(runs, base, f))
}

// pairs is f(run, base's run of that round) for every round in which both
// ran without error.
func pairs(runs, base []runResult, f func(run, base float64) float64) []float64 {
	var v []float64
	for _, r := range runs {
		if r.Error != "" || r.CPUPerRT <= 0 {
			continue
		}
		i := slices.IndexFunc(base, func(b runResult) bool { return b.Repeat == r.Repeat && b.Error == "" && b.CPUPerRT > 0 })
		if i >= 0 {
			v = append(v, f(r.CPUPerRT, base[i].CPUPerRT))
		}
	}
	return v
}

// otherCPU is the CPU, in % of one CPU, that other processes used over
// all runs together, which the machine's tick-grained count gives more
// truly than any one short run does; -1 if unknown for some run.
func otherCPU(runs []runResult) float64 {
	var ns, wall float64
	for _, r := range runs {
		if !r.otherOK {
			return -1
		}
		ns += float64(r.otherNS)
		wall += r.Seconds * 1e9
	}
	if wall <= 0 {
		return -1
	}
	return max(ns, 0) / wall * 100
}

func ratio(a, b float64) float64 { return a / b }
func diff(a, b float64) float64  { return a - b }

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
	if sr.CPUPerRT > 0 { // 0 for a -target, whose CPU is not known
		sr.CPUSpreadPct = (quantile(cpu, 0.75) - quantile(cpu, 0.25)) / 2 / sr.CPUPerRT * 100
	}
	sr.ClientCPU = median(get(func(r runResult) float64 { return r.ClientCPU }))
	sr.PeakRSSMB = slices.Max(get(func(r runResult) float64 { return float64(r.MaxRSSKB) / 1024 }))
	sr.CSWPerRT = median(get(func(r runResult) float64 { return r.CSWPerRT }))
	sr.OtherCPU = otherCPU(ok)
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
			return float64(r.Stats.Syscalls) / r.StatsRoundTrips
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
			rts += r.StatsRoundTrips
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

// okRuns splits runs into the successful ones and the failed ones'
// errors, joined.
func okRuns[T any](runs []T, errOf func(T) string) (ok []T, errs string) {
	var e []string
	for _, r := range runs {
		if m := errOf(r); m != "" {
			e = append(e, m)
		} else {
			ok = append(ok, r)
		}
	}
	return ok, strings.Join(e, "; ")
}

// medianOf is the median of f over runs.
func medianOf[T any](runs []T, f func(T) float64) float64 {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	return median(v)
}

func median(v []float64) float64 { return quantile(v, 0.5) }

// quantile is the q-quantile of v, interpolated between the two nearest
// values; 0 for none.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	pos := q * float64(len(s)-1)
	i := int(pos)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[i] + (s[i+1]-s[i])*(pos-float64(i))
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

func printJSON(w io.Writer, r any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		// A report that cannot be written must not pass for an empty one.
		fmt.Fprintln(os.Stderr, "bench: writing the JSON report:", err)
		os.Exit(1)
	}
}

// noisyPct is the CPU use of other processes, in % of one CPU, above which
// a run is flagged as disturbed.
const noisyPct = 10

// spreadPct is the ± of a server's ratio to plugloop/epoll between rounds
// above which the median ratio is flagged as fragile.
//
// A slice's ratio on its own moves by ±5–15% on this project's VM; the
// median of a dozen is steadier (see suite.sliceDuration).
const spreadPct = 10

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
