//go:build unix

package main

import (
	"context"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"
)

// TestMain lets the test binary serve as a server child too, as the bench
// binary does.
func TestMain(m *testing.M) {
	if name := os.Getenv(childEnv); name != "" {
		runChild(name)
	}
	if name := os.Getenv(taskEnv); name != "" {
		runTask(name)
	}
	os.Exit(m.Run())
}

// TestRunOne drives the whole parent/child path briefly: a plugloop server
// and a peer, each in a child process, with stats coming back.
func TestRunOne(t *testing.T) {
	cfg := &config{conns: 4, size: 64, warmup: 50 * time.Millisecond, duration: 200 * time.Millisecond}
	for _, name := range []string{plugloopPrefix + "epoll", netName} {
		t.Run(strings.ReplaceAll(name, "/", "-"), func(t *testing.T) {
			r := runOne(context.Background(), cfg, name, 0, false)
			if r.Error != "" {
				t.Fatal(r.Error)
			}
			if r.RoundTrips < 10 || r.CPUNS <= 0 || r.MaxRSSKB <= 0 || r.GoMaxProcs != 1 {
				t.Fatalf("implausible result %+v", r)
			}
			if isPlugloop := strings.HasPrefix(name, plugloopPrefix); isPlugloop != (r.Stats != nil) {
				t.Fatalf("stats %+v for %s", r.Stats, name)
			}
			if r.Stats != nil && (r.Stats.Reads == 0 || r.Stats.Writes == 0) {
				t.Fatalf("no reads or writes counted: %+v", r.Stats)
			}
		})
	}
}

// TestScenarios runs every scenario but ping-pong briefly against two
// servers and checks that each produced a table without errors.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server children")
	}
	known := knownServers()
	var servers []serverInfo
	for _, sv := range known {
		if sv.Name == plugloopPrefix+"epoll" || sv.Name == netName {
			servers = append(servers, sv)
		}
	}
	cfg := &config{servers: servers, warmup: 50 * time.Millisecond, duration: 200 * time.Millisecond, fdLimit: raiseFDLimit(), repeats: 1}
	s := &suite{cfg: cfg, streamConns: 2, churnClients: 2, idleConns: 20, slowConns: 2, slowDur: 300 * time.Millisecond, arrivals: 10, timerCount: 20000}
	for _, name := range []string{"stream", "churn", "arrival", "idle", "slow", "timers", "wakeup"} {
		s.scenarios = append(s.scenarios, scenarios[scenarioIndex(name)])
	}
	rep := s.run(context.Background())
	if len(rep.Unreached) > 0 {
		t.Fatalf("unreached: %v", rep.Unreached)
	}
	if len(rep.Scenarios) != 7 {
		t.Fatalf("%d scenarios reported", len(rep.Scenarios))
	}
	for _, sc := range rep.Scenarios {
		for _, tb := range sc.Tables {
			for _, row := range tb.Rows {
				if len(row) < len(tb.Header) {
					t.Errorf("%s: row %v: %v", sc.Name, row, tb.Notes)
				}
			}
		}
		if sc.Name == "churn" {
			for _, r := range sc.Data.([]churnResult) {
				if r.Error != "" || r.ConnsPerSec <= 0 || r.CPUUSPerConn <= 0 {
					t.Errorf("churn: %+v", r)
				}
			}
		}
		if sc.Name == "arrival" {
			for _, r := range sc.Data.([]arrivalResult) {
				if r.Error != "" || r.P50US <= 0 || r.MaxUS < r.P50US || r.LoadRTPerSec <= 0 {
					t.Errorf("arrival: %+v", r)
				}
			}
		}
	}
	var b strings.Builder
	printSuite(&b, rep)
	if !strings.Contains(b.String(), "== slow") {
		t.Errorf("no slow scenario in\n%s", b.String())
	}
	if err := writeHTML(t.TempDir()+"/r.html", rep); err != nil {
		t.Fatal(err)
	}
}

func TestRunOneFailingServer(t *testing.T) {
	cfg := &config{conns: 1, size: 64, warmup: 10 * time.Millisecond, duration: 10 * time.Millisecond}
	r := runOne(context.Background(), cfg, "no-such-server", 0, false)
	if !strings.Contains(r.Error, "unknown server") {
		t.Fatalf("error %q, want one naming the unknown server", r.Error)
	}
}

func TestParseStrace(t *testing.T) {
	s, err := parseStrace(`% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.600000           3    200000           write
 30.00    0.300000           1    200000     10000 read
 10.00    0.100000           1     50000           epoll_pwait
------ ----------- ----------- --------- --------- ----------------
100.00    1.000000           2    450000     10000 total
`)
	if err != nil {
		t.Fatal(err)
	}
	if s.Total != 450000 || s.Calls["read"] != 200000 || s.Calls["epoll_pwait"] != 50000 {
		t.Fatalf("parsed %+v", s)
	}
	if _, err := parseStrace("strace: exec: No such file or directory\n"); err == nil {
		t.Fatal("no error for output without a summary")
	}
}

func TestParsePerf(t *testing.T) {
	s, err := parsePerf(`# started on Sun Nov 22 07:05:01 2026

450100,,raw_syscalls:sys_enter,2000000000,100.00,,
200000,,syscalls:sys_enter_read,2000000000,100.00,,
200000,,syscalls:sys_enter_write,2000000000,100.00,,
0,,syscalls:sys_enter_futex,2000000000,100.00,,
<not supported>,,syscalls:sys_enter_epoll_pwait2,0,100.00,,
50000,,syscalls:sys_enter_epoll_pwait,2000000000,100.00,,
`)
	if err != nil {
		t.Fatal(err)
	}
	if s.Total != 450100 || s.Calls["read"] != 200000 || s.Calls["other"] != 100 || s.Calls["futex"] != 0 {
		t.Fatalf("parsed %+v", s)
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 95123.4: "95,123", 1234567: "1,234,567"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}

// TestEachServerAlternates checks the run order: every other round
// reversed, results kept per server in round order.
func TestEachServerAlternates(t *testing.T) {
	servers := []serverInfo{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	var order []string
	out := eachServer(context.Background(), servers, 3, func(sv serverInfo, r int) int {
		order = append(order, sv.Name+strconv.Itoa(r))
		return r
	}, strconv.Itoa)
	if got, want := strings.Join(order, " "), "a0 b0 c0 c1 b1 a1 a2 b2 c2"; got != want {
		t.Fatalf("order %q, want %q", got, want)
	}
	for _, sv := range servers {
		if got := out[sv.Name]; len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 2 {
			t.Fatalf("%s: results %v, want rounds 0 1 2", sv.Name, got)
		}
	}
}

// TestPaired checks that a comparison pairs runs of the same round and
// skips rounds in which either failed: a machine that runs twice as fast
// in round 1 leaves the ratio where it was.
func TestPaired(t *testing.T) {
	run := func(rep int, cpu float64, err string) runResult {
		return runResult{Repeat: rep, CPUPerRT: cpu, Error: err}
	}
	base := []runResult{run(0, 10, ""), run(1, 5, ""), run(2, 0, "refused")}
	runs := []runResult{run(0, 12, ""), run(1, 6, ""), run(2, 7, "")}
	if got := paired(runs, base, ratio); got != 1.2 {
		t.Errorf("ratio %v, want 1.2", got)
	}
	if got := paired(runs, base, diff); got != 1.5 {
		t.Errorf("diff %v, want 1.5 (median of 2 and 1)", got)
	}
	if got := paired(runs[2:], base, ratio); got != 0 {
		t.Errorf("no shared round: %v, want 0", got)
	}
}

func TestEngineRatio(t *testing.T) {
	run := func(rep int, cpu float64) runResult {
		return runResult{Repeat: rep, CPUPerRT: cpu, RoundTrips: 1000}
	}
	cfg := &config{}
	results := map[string][]runResult{}
	for name, cpu := range map[string][2]float64{
		plugloopPrefix + "epoll":   {2, 2},
		plugloopPrefix + "gnet":    {3, 4},
		gnetName:                   {2, 5},
		plugloopPrefix + "netpoll": {3, 3}, // netpoll's own server did not run
	} {
		cfg.servers = append(cfg.servers, serverInfo{Name: name})
		results[name] = []runResult{run(0, cpu[0]), run(1, cpu[1])}
	}
	r := buildReport(cfg, results, nil, time.Now(), false)
	want := map[string]float64{plugloopPrefix + "gnet": 1.15} // median of 3/2 and 4/5
	for _, s := range r.Servers {
		if got := s.CPUVsEngine; math.Abs(got-want[s.Name]) > 1e-9 {
			t.Errorf("%s against its engine: %v, want %v", s.Name, got, want[s.Name])
		}
	}
}

// ---- micro benchmarks (go test -bench . ./bench) ----

// inLoop runs f on a plugloop service thread, where callbacks run, so it
// measures what a callback pays.
func inLoop(b *testing.B, f func(t *core.Thread)) {
	b.Helper()
	ctx, err := core.New(core.Info{EventLib: "epoll", Protocols: []core.Protocol{echo.Protocol("echo")}})
	if err != nil {
		b.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- ctx.Run(context.Background()) }()
	done := make(chan struct{})
	t := ctx.Thread(0)
	if err := t.Post(func() { f(t); close(done) }); err != nil {
		b.Fatal(err)
	}
	<-done
	ctx.Destroy()
	<-ctx.Done()
	if err := <-runDone; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkTimer measures the timer heap through the exported API, from a
// callback: schedule and cancel a new timer, and re-arm an existing one,
// with none and with 100,000 other timers pending.
func BenchmarkTimer(b *testing.B) {
	nop := func() {}
	for _, pending := range []int{0, 100_000} {
		b.Run("AfterFunc+Stop/pending="+strconv.Itoa(pending), func(b *testing.B) {
			inLoop(b, func(t *core.Thread) {
				keep := schedule(b, t, pending)
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					tm, err := t.AfterFunc(time.Duration(i%1000)*time.Millisecond+time.Hour, nop)
					if err != nil {
						b.Fatal(err)
					}
					tm.Stop()
				}
				b.StopTimer()
				stopAll(keep)
			})
		})
		b.Run("Reset/pending="+strconv.Itoa(pending), func(b *testing.B) {
			inLoop(b, func(t *core.Thread) {
				keep := schedule(b, t, pending)
				tm, err := t.AfterFunc(time.Hour, nop)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					tm.Reset(time.Duration(i%1000)*time.Millisecond + time.Hour)
				}
				b.StopTimer()
				tm.Stop()
				stopAll(keep)
			})
		})
	}
}

func schedule(b *testing.B, t *core.Thread, n int) []*core.Timer {
	keep := make([]*core.Timer, n)
	for i := range keep {
		tm, err := t.AfterFunc(time.Hour+time.Duration(i)*time.Microsecond, func() {})
		if err != nil {
			b.Fatal(err)
		}
		keep[i] = tm
	}
	return keep
}

func stopAll(ts []*core.Timer) {
	for _, tm := range ts {
		tm.Stop()
	}
}

// BenchmarkEchoRoundTrip is one 64-byte ping-pong through internal/echo on
// a plugloop context, per backend, with client and server in this process
// (so ns/op includes the client's side). syscalls/op is the core's count.
func BenchmarkEchoRoundTrip(b *testing.B) {
	for _, s := range knownServers() {
		// foreign needs a host loop rather than Run: BenchmarkEchoStream
		// covers it.
		if s.Backend == "" || s.Skip != "" || s.Backend == foreign.Name {
			continue
		}
		b.Run(s.Backend, func(b *testing.B) {
			ctx, err := core.New(core.Info{EventLib: s.Backend, Protocols: []core.Protocol{echo.Protocol("echo")}})
			if err != nil {
				b.Fatal(err)
			}
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
			if err != nil {
				b.Fatal(err)
			}
			runDone := make(chan error, 1)
			go func() { runDone <- ctx.Run(context.Background()) }()
			defer func() {
				ctx.Destroy()
				<-ctx.Done()
				<-runDone
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			out, in := make([]byte, 64), make([]byte, 64)
			roundTrip := func() {
				if _, err := c.Write(out); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, in); err != nil {
					b.Fatal(err)
				}
			}
			roundTrip() // accepted and warm
			s0 := ctx.Stats()
			b.ResetTimer()
			for range b.N {
				roundTrip()
			}
			b.StopTimer()
			b.ReportMetric(float64(ctx.Stats().Syscalls()-s0.Syscalls())/float64(b.N), "syscalls/op")
		})
	}
}

// BenchmarkPost is the cross-goroutine dispatch path: Thread.Post from
// another goroutine to the callback running on the loop, pipelined (at
// most 1024 pending), per callback.
func BenchmarkPost(b *testing.B) {
	for _, s := range knownServers() {
		if s.Backend == "" || s.Skip != "" {
			continue
		}
		b.Run(s.Backend, func(b *testing.B) {
			l, err := startLoop(s.Backend, core.Protocol{Name: "p", Callback: func(core.Event) error { return nil }})
			if err != nil {
				b.Fatal(err)
			}
			defer l.stop()
			var done atomic.Int64
			inc := func() { done.Add(1) }
			t := l.ctx.Thread(0)
			s0 := l.ctx.Stats()
			b.ResetTimer()
			for i := range b.N {
				for int64(i)-done.Load() >= 1024 {
					runtime.Gosched()
				}
				t.Post(inc)
			}
			for done.Load() < int64(b.N) {
				runtime.Gosched()
			}
			b.StopTimer()
			b.ReportMetric(float64(l.ctx.Stats().Wakes-s0.Wakes)/float64(b.N), "wakes/op")
		})
	}
}

// BenchmarkEchoStream is the receive-dispatch-write path under pipelining:
// a client writes 64-byte messages back to back while another goroutine
// reads the echo; ns/op is per message, and syscalls/op the core's count
// (which falls as reads and writes batch).
func BenchmarkEchoStream(b *testing.B) {
	const size = 64
	for _, s := range knownServers() {
		if s.Backend == "" || s.Skip != "" {
			continue
		}
		b.Run(s.Backend, func(b *testing.B) {
			l, err := startLoop(s.Backend, echo.Protocol("echo"))
			if err != nil {
				b.Fatal(err)
			}
			defer l.stop()
			// Listen on the loop: some backends own their thread once running.
			var addr string
			l.onLoop(func(*core.Thread) {
				var ln *core.Listener
				if ln, err = l.ctx.Listen("tcp", "127.0.0.1:0", ""); err == nil {
					addr = ln.Addr().String()
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, size)
			readDone := make(chan error, 1)
			s0 := l.ctx.Stats()
			b.SetBytes(size)
			b.ResetTimer()
			go func() {
				_, err := io.CopyN(io.Discard, c, int64(b.N)*size)
				readDone <- err
			}()
			for range b.N {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-readDone; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(l.ctx.Stats().Syscalls()-s0.Syscalls())/float64(b.N), "syscalls/op")
		})
	}
}

// TestRelayScenario runs the relay scenario briefly: every proxy carries
// the echo, and those on the core's relay carry it through RelayTo both
// ways (about two bytes relayed per byte echoed), the others none. The
// proxy's count and the clients' are taken a moment apart, a difference
// that a loaded machine (-race) stretched to a quarter of a 200 ms window
// (1.47 bytes relayed per byte echoed), hence the longer window.
func TestRelayScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("starts proxy children")
	}
	cfg := &config{warmup: 50 * time.Millisecond, duration: 800 * time.Millisecond, fdLimit: raiseFDLimit(), repeats: 1}
	s := &suite{cfg: cfg, streamConns: 2, relayProxies: []string{"relayto/epoll", "relayto/poll", "callback/epoll", "stdlib"},
		scenarios: []scenario{scenarios[scenarioIndex("relay")]}}
	rep := s.run(context.Background())
	if len(rep.Unreached) > 0 || len(rep.Scenarios) != 1 {
		t.Fatalf("unreached %v, %d scenarios", rep.Unreached, len(rep.Scenarios))
	}
	data := rep.Scenarios[0].Data.([]streamResult)
	if len(data) != len(s.relayProxies) {
		t.Fatalf("%d results for %d proxies", len(data), len(s.relayProxies))
	}
	for _, r := range data {
		if r.Error != "" {
			t.Fatalf("%s: %s", r.Server, r.Error)
		}
		relayTo := strings.HasPrefix(r.Server, "relayto/")
		if r.MBPerSec <= 0 || relayTo != (r.RelayedPerMB > 1.5e6) || !relayTo && r.RelayedPerMB != 0 {
			t.Errorf("%s: %.1f MB/s, %.0f bytes relayed per MB echoed", r.Server, r.MBPerSec, r.RelayedPerMB)
		}
		if relayTo && r.SplicesPerMB == 0 {
			t.Errorf("%s: no splices", r.Server)
		}
	}
	if !slices.ContainsFunc(rep.Scenarios[0].Tables[0].Rows, func(row []string) bool { return row[0] == "stdlib" }) {
		t.Errorf("no stdlib row in %v", rep.Scenarios[0].Tables[0].Rows)
	}
}

// TestRelayOptIn: the default selection leaves the relay scenario out.
func TestRelayOptIn(t *testing.T) {
	sc, err := selectScenarios("")
	if err != nil || slices.ContainsFunc(sc, func(s scenario) bool { return s.Name == "relay" }) {
		t.Fatalf("default scenarios %v (%v) include relay", sc, err)
	}
	if sc, err := selectScenarios("relay"); err != nil || len(sc) != 1 {
		t.Fatalf("-scenarios relay: %v, %v", sc, err)
	}
}

// TestSessionSlices: one child measured in several slices, its load
// paused between them, gives a result per slice from the same process.
func TestSessionSlices(t *testing.T) {
	cfg := &config{conns: 4, size: 64, warmup: 50 * time.Millisecond, duration: 100 * time.Millisecond}
	s := openSession(context.Background(), cfg, plugloopPrefix+"epoll", false)
	var pids []int
	for r := range 3 {
		res := s.measure(context.Background(), r)
		if res.Error != "" {
			t.Fatal(res.Error)
		}
		if res.Repeat != r || res.RoundTrips < 10 || res.CPUNS <= 0 || res.Stats == nil || res.Stats.Reads == 0 || res.PID == 0 {
			t.Fatalf("slice %d: implausible result %+v", r, res)
		}
		pids = append(pids, res.PID)
		n := s.lg.total()
		time.Sleep(20 * time.Millisecond)
		if got := s.lg.total(); got != n {
			t.Fatalf("slice %d: %d round trips after it ended", r, got-n)
		}
	}
	var res runResult
	s.close(&res)
	if res.Error != "" || pids[0] != pids[2] {
		t.Fatalf("close: %q; children %v", res.Error, pids)
	}
}

// TestSessionStalledServer: a server that stalls a connection fails the
// slice that finds it, and every later one, and its load stops at once
// rather than run on beside other servers' slices.
func TestSessionStalledServer(t *testing.T) {
	addr, stalled := echoServer(t, echoStall)
	cfg := &config{conns: 3, size: 64, warmup: 20 * time.Millisecond, duration: 50 * time.Millisecond, target: addr, load: loadNet}
	s := openSession(context.Background(), cfg, targetName, false)
	<-stalled
	first := s.measure(context.Background(), 0)
	if !strings.Contains(first.Error, "stalled") {
		t.Fatalf("slice 0: error %q, want the stalled connection's", first.Error)
	}
	if !s.ended {
		t.Fatal("the load still runs after the failed slice")
	}
	if again := s.measure(context.Background(), 1); again.Error != first.Error {
		t.Fatalf("slice 1: error %q, want %q", again.Error, first.Error)
	}
	var res runResult
	s.close(&res)
	if !strings.Contains(res.Error, "stalled") {
		t.Fatalf("close: %q", res.Error)
	}
}

// TestPingPongFewFDs: where this process's fd limit has no room for every
// server's connections at once, the servers still take turns, each slice
// in a child of its own, and every slice is measured.
func TestPingPongFewFDs(t *testing.T) {
	servers := []serverInfo{{Name: plugloopPrefix + "epoll", Backend: "epoll"}, {Name: plugloopPrefix + "poll", Backend: "poll"}}
	cfg := &config{servers: servers, conns: 4, size: 64, warmup: 20 * time.Millisecond, duration: 50 * time.Millisecond,
		repeats: 2, fdLimit: fdsFor(4) + 10, load: loadNet}
	rep := runPingPong(context.Background(), cfg)
	if len(rep.Servers) != 2 {
		t.Fatalf("%d servers reported", len(rep.Servers))
	}
	for _, s := range rep.Servers {
		if len(s.Runs) != 2 || s.Error != "" {
			t.Fatalf("%s: %d runs, error %q", s.Name, len(s.Runs), s.Error)
		}
	}
	// Rounds run epoll, poll, then poll, epoll: poll's two slices follow
	// each other, epoll's have poll's between them.
	if epoll := rep.Servers[0].Runs; epoll[0].PID == epoll[1].PID {
		t.Fatalf("epoll's slices both in child %d, which poll's should have closed", epoll[0].PID)
	}
}
