//go:build unix

package main

// Scenarios 1 and 7: closed-loop ping-pong echo over a matrix of payload
// sizes and connection counts, and the abstraction cost read off it.

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// pingpongPlan is the (size, conns) configurations to run: the default
// suite's two, -full's six, or the product of -sizes and -conns.
func (s *suite) pingpongPlan() [][2]int {
	sizes, conns := s.sizes, s.conns
	if sizes == nil && conns == nil && !s.full {
		return [][2]int{{64, 50}, {1024, 1000}}
	}
	if sizes == nil {
		sizes = []int{64, 1024}
	}
	if conns == nil {
		conns = []int{50, 1000}
		if s.full {
			conns = append(conns, 10000)
		}
	}
	var plan [][2]int
	for _, n := range conns {
		for _, z := range sizes {
			plan = append(plan, [2]int{z, n})
		}
	}
	return plan
}

// fdsFor is how many descriptors a process needs for n connections, with
// room for the runtime's own.
func fdsFor(n int) uint64 { return uint64(n) + 64 }

// sessionsFit is how many servers' loads of cfg.conns connections this
// process has descriptors for at once: at least one.
func sessionsFit(cfg *config) int { return max(int(cfg.fdLimit/fdsFor(cfg.conns)), 1) }

func runPingPongScenario(ctx context.Context, s *suite) *scenarioResult {
	res := &scenarioResult{
		Measures: "Each connection keeps one message in flight: write it, read the echo in full, check it, repeat. " +
			"The figure that separates servers is the server's CPU per round trip (user+sys of the server child, its CPU clock read with the load's counters at both ends of the measured window); " +
			"throughput is shared with the load generator on the other CPU. syscalls/rt: plugloop's own count (core Stats) — peers only with -perf or -strace.",
	}
	var data []*report
	for i, pc := range s.pingpongPlan() {
		if ctx.Err() != nil {
			break
		}
		size, n := pc[0], pc[1]
		if need := fdsFor(n); need > s.cfg.fdLimit {
			s.unreachable("ping-pong %d B × %d connections: needs %d fds per process, the limit is %d (raise ulimit -n)", size, n, need, s.cfg.fdLimit)
			continue
		}
		cfg := *s.cfg
		cfg.size, cfg.conns = size, n
		cfg.duration, cfg.repeats = s.sliceDuration(), s.slices()
		cfg.servers = s.servers()
		if sessionsFit(&cfg) < len(cfg.servers) && s.cfg.duration == 0 && s.cfg.repeats == 0 {
			// Not every server's connections fit in this process at
			// once, so a server's slice would start a child of its own:
			// fewer, longer runs, as before slices.
			cfg.duration, cfg.repeats = s.duration(), 3
		}
		cfg.strace = cfg.strace || (i == 0 && cfg.straceFirst)
		if cfg.load == loadUring {
			cfg.loadWait = s.cfg.loadWait
			if cfg.loadWait <= 0 {
				cfg.loadWait = uringWait(n)
			}
		}
		progress(" ping-pong %d B, %d connections:\n", size, n)
		rep := runPingPong(ctx, &cfg)
		s.pingpong[pc] = rep
		data = append(data, rep)
		t, notes := pingpongTable(rep, s.cfg.target != "")
		res.Tables = append(res.Tables, t)
		res.Notes = appendNew(res.Notes, notes...)
		res.Charts = append(res.Charts, pingpongCharts(rep, s.cfg.target != "")...)
	}
	res.Notes = append(res.Notes, fmt.Sprintf("load generator: %s", strings.ReplaceAll(s.cfg.loadNote, "\n             ", "")))
	res.Data = data
	return res
}

func appendNew(list []string, items ...string) []string {
	for _, it := range items {
		if !slices.Contains(list, it) {
			list = append(list, it)
		}
	}
	return list
}

// pingpongTable is one configuration's table, and notes on it.
func pingpongTable(r *report, target bool) (table, []string) {
	c := r.Conditions
	each := "slices"
	if c.ChildPerRun {
		each = "runs"
	}
	t := table{Title: fmt.Sprintf("ping-pong, %d B payload, %d connections (medians of %d %s × %gs, servers taking turns)", c.PayloadBytes, c.Conns, c.Repeats, each, c.DurationSeconds)}
	t.Header = []string{"server", "round trips/s", "server CPU µs/rt", "±", "vs plugloop/epoll", "syscalls/rt", "ctx sw/rt", "peak RSS MB", "others %CPU"}
	if c.Perf {
		t.Header = append(t.Header, "perf syscalls/rt")
	}
	if c.Strace {
		t.Header = append(t.Header, "strace syscalls/rt")
	}
	var notes []string
	noisy := false
	for _, s := range r.Servers {
		if s.RTPerSec == 0 {
			t.failed(s.Name, s.Error)
			continue
		}
		row := []string{
			s.Name, thousands(s.RTPerSec), fmt.Sprintf("%.2f", s.CPUPerRT), fmt.Sprintf("%.1f%%", s.CPUSpreadPct),
			dash(s.CPUVsEpoll, "%.2fx"), dash(s.SyscallsPerRT, "%.2f"), fmt.Sprintf("%.2f", s.CSWPerRT),
			fmt.Sprintf("%.1f", s.PeakRSSMB), "?",
		}
		if target {
			row[2], row[3], row[6], row[7] = "-", "-", "-", "-"
		}
		if s.OtherCPU >= 0 {
			row[8] = fmt.Sprintf("%.0f", s.OtherCPU)
			noisy = noisy || s.OtherCPU > noisyPct
		}
		if c.Perf {
			row = append(row, dash(s.PerfSyscallsPerRT, "%.2f"))
		}
		if c.Strace {
			row = append(row, dash(s.StraceSyscallsPerRT, "%.2f"))
		}
		if s.Error != "" {
			t.Notes = append(t.Notes, fmt.Sprintf("! %s: %s", s.Name, s.Error))
		}
		if s.VsEpollSpreadPct > spreadPct && c.Repeats > 1 && !target {
			t.Notes = append(t.Notes, fmt.Sprintf("! %s: its ratio to plugloop/epoll varied by ±%.0f%% between rounds (half the interquartile range); more slices (-repeats) would steady it", s.Name, s.VsEpollSpreadPct))
		}
		t.Rows = append(t.Rows, row)
	}
	for _, s := range r.Servers {
		if s.PerfPerRT != nil {
			t.Notes = append(t.Notes, fmt.Sprintf("perf, per rt: %s: %s", s.Name, topCalls(s.PerfPerRT, 6)))
		}
		if s.StracePerRT != nil {
			t.Notes = append(t.Notes, fmt.Sprintf("strace, per rt: %s: %s", s.Name, topCalls(s.StracePerRT, 6)))
		}
	}
	var engines []string
	for _, s := range r.Servers {
		if s.CPUVsEngine > 0 && !target {
			engines = append(engines, fmt.Sprintf("%s %.2fx %s", s.Name, s.CPUVsEngine, strings.TrimPrefix(s.Name, plugloopPrefix)))
		}
	}
	if len(engines) > 0 {
		t.Notes = append(t.Notes, "adapters against their engine's own server (server CPU/rt, paired like vs plugloop/epoll): "+strings.Join(engines, ", "))
	}
	if noisy {
		t.Notes = append(t.Notes, fmt.Sprintf("! other processes used more than %d%% of a CPU during some server's slices: its figures are disturbed", noisyPct))
	}
	how := "slices: every server runs as one child under one load throughout; the load is paused between its slices, " +
		"and the servers take turns slice by slice (every other round in reverse order), so all meet the machine's changes of speed alike; "
	if c.ChildPerRun {
		how = "runs: the fd limit has no room for every server's connections at once, so each run starts a child and a load of its own, " +
			"with its own warm-up; the servers take turns run by run (every other round in reverse order); "
	}
	notes = append(notes, how+
		"server CPU µs/rt: user+sys CPU of the server child per round trip, median over slices; ± half the interquartile range over slices; "+
		"vs plugloop/epoll: the median over slices of the ratio to plugloop/epoll's slice in the same round; "+
		"ctx sw/rt: the server's context switches per round trip; others %CPU: the CPU other processes used during the server's slices (% of one CPU).")
	if target {
		notes = append(notes, "-target: the server is external, so no server CPU, RSS or syscall figures.")
	}
	if c.Strace {
		notes = append(notes, "strace syscalls/rt: every system call of the server (strace -c -f) over its life in a separate traced run; tracing changes batching.")
	}
	if c.Perf {
		notes = append(notes, "perf syscalls/rt: every system call of the server over the measured window (perf stat, syscall tracepoints).")
	}
	return t, notes
}

func pingpongCharts(r *report, target bool) []chart {
	c := r.Conditions
	cpu := chart{Title: fmt.Sprintf("server CPU per round trip — %d B, %d conns", c.PayloadBytes, c.Conns), Unit: "µs", LowerBetter: true}
	rate := chart{Title: fmt.Sprintf("round trips per second — %d B, %d conns", c.PayloadBytes, c.Conns), Unit: "rt/s"}
	for _, s := range r.Servers {
		if s.RTPerSec == 0 {
			continue
		}
		cpu.Bars = append(cpu.Bars, bar{Label: s.Name, Value: s.CPUPerRT})
		rate.Bars = append(rate.Bars, bar{Label: s.Name, Value: s.RTPerSec, Text: thousands(s.RTPerSec)})
	}
	if target {
		return []chart{rate}
	}
	return []chart{cpu, rate}
}

// runAbstraction compares every plugloop backend with the bare epoll loop
// at 64 B × 50 connections, reusing the ping-pong run when it had both.
func runAbstraction(ctx context.Context, s *suite) *scenarioResult {
	res := &scenarioResult{
		Measures: "The same 64-byte ping-pong at 50 connections on every plugloop backend and on bare-epoll, a minimal level-triggered epoll loop " +
			"(one read, one write per ready connection, x/sys calls only): the difference in server CPU per round trip is what plugloop's layers cost.",
	}
	if s.cfg.target != "" {
		s.unreachable("abstraction: needs the bench's own servers, not -target")
		return nil
	}
	var servers []serverInfo
	for _, sv := range s.cfg.servers {
		if sv.Backend != "" || sv.Name == rawName {
			servers = append(servers, sv)
		}
	}
	if !slices.ContainsFunc(servers, func(sv serverInfo) bool { return sv.Name == rawName }) {
		s.unreachable("abstraction: bare-epoll is not among -servers (or not available here)")
		return nil
	}
	rep := s.pingpong[[2]int{64, 50}]
	if rep != nil {
		for _, sv := range servers {
			if !slices.ContainsFunc(rep.Servers, func(r serverReport) bool { return r.Name == sv.Name }) {
				rep = nil
				break
			}
		}
	}
	if rep != nil {
		res.Notes = append(res.Notes, "figures from the ping-pong 64 B × 50 connections runs above (same run, interleaved)")
	} else {
		cfg := *s.cfg
		cfg.size, cfg.conns, cfg.servers = 64, 50, servers
		cfg.duration, cfg.repeats = s.sliceDuration(), s.slices()
		if cfg.loadWait <= 0 {
			cfg.loadWait = uringWait(50)
		}
		rep = runPingPong(ctx, &cfg)
	}
	var base *serverReport
	for i := range rep.Servers {
		if rep.Servers[i].Name == rawName && rep.Servers[i].RTPerSec > 0 {
			base = &rep.Servers[i]
		}
	}
	if base == nil {
		s.unreachable("abstraction: the bare epoll loop failed")
		return res
	}
	t := table{Header: []string{"server", "server CPU µs/rt", "vs bare-epoll", "extra µs/rt", "syscalls/rt (Stats)", "round trips/s"}}
	ch := chart{Title: "server CPU per round trip, 64 B × 50 conns, against a bare epoll loop", Unit: "µs", LowerBetter: true}
	for _, sv := range rep.Servers {
		if sv.RTPerSec == 0 || !slices.ContainsFunc(servers, func(x serverInfo) bool { return x.Name == sv.Name }) {
			continue
		}
		vs, extra := "-", "-" // no round in which both ran
		if r := paired(sv.Runs, base.Runs, ratio); r > 0 {
			vs, extra = fmt.Sprintf("%.2fx", r), fmt.Sprintf("%+.2f", paired(sv.Runs, base.Runs, diff))
		}
		t.Rows = append(t.Rows, []string{sv.Name, fmt.Sprintf("%.2f", sv.CPUPerRT), vs, extra, dash(sv.SyscallsPerRT, "%.2f"), thousands(sv.RTPerSec)})
		ch.Bars = append(ch.Bars, bar{Label: sv.Name, Value: sv.CPUPerRT})
	}
	t.Notes = append(t.Notes, "vs bare-epoll, extra µs/rt: medians over repeats of the comparison with bare-epoll's run in the same round.",
		"bare-epoll makes 2 system calls per round trip plus a share of one epoll_wait; plugloop's Stats count the same kinds of calls.")
	res.Tables = []table{t}
	res.Charts = []chart{ch}
	res.Data = rep
	return res
}
