//go:build unix

package main

// Scenarios 4 and 5, measured inside a child process of their own (the
// bench re-executed with taskEnv set), which prints one JSON line: timers
// on a plugloop thread against Go's runtime timers, and wakeups of a
// plugloop thread from another goroutine.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/foreign"
)

// taskEnv names the measurement a re-executed bench binary runs.
const taskEnv = "PLUGLOOP_BENCH_TASK"

// runTaskChild runs a task child and decodes its answer into v. cpus pins
// it (nil: not pinned); procs is its GOMAXPROCS.
func runTaskChild(ctx context.Context, name string, cpus []int, procs int, v any) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, exe)
	env := childEnviron("", cpus)
	env = slices.DeleteFunc(env, func(kv string) bool {
		return strings.HasPrefix(kv, childEnv+"=") || strings.HasPrefix(kv, "GOMAXPROCS=")
	})
	cmd.Env = append(env, taskEnv+"="+name, fmt.Sprintf("GOMAXPROCS=%d", procs))
	cmd.SysProcAttr = childSysProcAttr()
	cmd.WaitDelay = time.Second
	stderr := &tailBuffer{max: 4 << 10}
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		if s := stderr.String(); s != "" {
			err = fmt.Errorf("%w (stderr: %s)", err, s)
		}
		return err
	}
	return json.Unmarshal(out, v)
}

// runTask is a task child's main. It never returns.
func runTask(name string) {
	if cpus := os.Getenv(childCPUEnv); cpus != "" {
		pinProcess(parseCPUs(cpus))
	}
	var v any
	var err error
	switch {
	case name == "timers":
		n := 1000000
		if s := os.Getenv(taskEnv + "_N"); s != "" {
			fmt.Sscan(s, &n)
		}
		v, err = measureTimers(n)
	case strings.HasPrefix(name, "wakeup:"):
		v, err = measureWakeup(strings.TrimPrefix(name, "wakeup:"))
	default:
		err = fmt.Errorf("unknown task %q", name)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(v)
	os.Exit(0)
}

// loop is a running plugloop context on one thread.
type loop struct {
	ctx  *core.Context
	done chan error
}

// startLoop runs a context with proto on the named backend; the foreign
// backend gets a unix.Poll host loop (foreign.PollSet) of its own.
func startLoop(backend string, proto core.Protocol) (*loop, error) {
	var set *foreign.PollSet
	if backend == foreign.Name {
		set = new(foreign.PollSet)
		proto = set.Protocol(proto)
	}
	ctx, err := core.New(core.Info{EventLib: backend, Protocols: []core.Protocol{proto}})
	if err != nil {
		return nil, err
	}
	l := &loop{ctx: ctx, done: make(chan error, 1)}
	go func() {
		runtime.LockOSThread()
		if set == nil {
			l.done <- ctx.Run(context.Background())
			return
		}
		t := ctx.Thread(0)
		for {
			if err := set.Poll(t, nil, -1); err != nil {
				if errors.Is(err, core.ErrDestroyed) {
					err = nil
				}
				l.done <- err
				return
			}
		}
	}()
	return l, nil
}

func (l *loop) stop() error {
	l.ctx.Thread(0).Post(func() { l.ctx.Destroy() })
	<-l.ctx.Done()
	return <-l.done
}

// onLoop runs f on the loop's thread and waits for it.
func (l *loop) onLoop(f func(t *core.Thread)) error {
	done := make(chan struct{})
	t := l.ctx.Thread(0)
	if err := t.Post(func() { f(t); close(done) }); err != nil {
		return err
	}
	<-done
	return nil
}

// ---- scenario 4: timers ----

type timerResult struct {
	N                 int     `json:"n"`
	Impl              string  `json:"impl"`
	ScheduleNS        float64 `json:"schedule_ns_per_op"`
	CancelNS          float64 `json:"cancel_ns_per_op"`
	BytesPerTimer     float64 `json:"heap_bytes_per_pending_timer"`
	AllocsPerSchedule float64 `json:"allocs_per_schedule"`
	Fired             int     `json:"fired,omitempty"`
	FireInversions    int     `json:"fire_order_inversions"` // fired before an earlier deadline (µs resolution)
	FireInversions1ms int     `json:"fire_order_inversions_over_1ms"`
	LateP50US         float64 `json:"late_p50_us,omitempty"`
	LateP99US         float64 `json:"late_p99_us,omitempty"`
}

func measureTimers(n int) ([]timerResult, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = time.Hour + time.Duration(rng.Int64N(3600_000_000))*time.Microsecond
	}
	order := rng.Perm(n)
	var ms0, ms1 runtime.MemStats
	nop := func() {}

	l, err := startLoop("epoll", core.Protocol{Name: "timers", Callback: func(core.Event) error { return nil }})
	if err != nil {
		return nil, err
	}
	pl := timerResult{N: n, Impl: "plugloop Thread.AfterFunc / Timer.Stop (on the loop)"}
	err = l.onLoop(func(t *core.Thread) {
		ts := make([]*core.Timer, n)
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		t0 := time.Now()
		for i, d := range ds {
			ts[i], _ = t.AfterFunc(d, nop)
		}
		pl.ScheduleNS = float64(time.Since(t0).Nanoseconds()) / float64(n)
		runtime.ReadMemStats(&ms1)
		pl.BytesPerTimer = float64(ms1.HeapAlloc-ms0.HeapAlloc) / float64(n)
		pl.AllocsPerSchedule = float64(ms1.Mallocs-ms0.Mallocs) / float64(n)
		t0 = time.Now()
		for _, i := range order {
			ts[i].Stop()
		}
		pl.CancelNS = float64(time.Since(t0).Nanoseconds()) / float64(n)
	})
	if err != nil {
		return nil, err
	}
	// Fire order: m timers due within 200 ms of a common start
	// (timerLead after the first is scheduled), scheduled in random order.
	// The lead keeps the time it takes to schedule them all (tens of ms,
	// in one callback) out of their lateness; were it longer, the
	// lateness would show it.
	m := min(n/10, 100000)
	due := make([]time.Duration, m)
	for i := range due {
		due[i] = timerLead + time.Duration(rng.IntN(200_000))*time.Microsecond
	}
	type fire struct {
		i  int
		at time.Duration
	}
	fired := make([]fire, 0, m)
	all := make(chan struct{})
	var start time.Time
	err = l.onLoop(func(t *core.Thread) {
		start = time.Now()
		for i, d := range due {
			t.AfterFunc(d-time.Since(start), func() {
				fired = append(fired, fire{i, time.Since(start)})
				if len(fired) == m {
					close(all)
				}
			})
		}
	})
	if err != nil {
		return nil, err
	}
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("only %d of %d timers fired within 10 s", len(fired), m)
	}
	l.onLoop(func(*core.Thread) {}) // fired is the loop's; this orders the reads after
	pl.Fired = m
	late := make([]float64, 0, m)
	var prev time.Duration
	for _, f := range fired {
		d := due[f.i]
		if d < prev {
			pl.FireInversions++
			if prev-d > time.Millisecond {
				pl.FireInversions1ms++
			}
		}
		prev = max(prev, d)
		late = append(late, float64(f.at-d)/1e3)
	}
	slices.Sort(late)
	pl.LateP50US, pl.LateP99US = late[len(late)/2], late[len(late)*99/100]
	if err := l.stop(); err != nil {
		return nil, err
	}

	g := timerResult{N: n, Impl: "Go time.AfterFunc / Timer.Stop"}
	ts := make([]*time.Timer, n)
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	t0 := time.Now()
	for i, d := range ds {
		ts[i] = time.AfterFunc(d, nop)
	}
	g.ScheduleNS = float64(time.Since(t0).Nanoseconds()) / float64(n)
	runtime.ReadMemStats(&ms1)
	g.BytesPerTimer = float64(ms1.HeapAlloc-ms0.HeapAlloc) / float64(n)
	g.AllocsPerSchedule = float64(ms1.Mallocs-ms0.Mallocs) / float64(n)
	t0 = time.Now()
	for _, i := range order {
		ts[i].Stop()
	}
	g.CancelNS = float64(time.Since(t0).Nanoseconds()) / float64(n)
	return []timerResult{pl, g}, nil
}

// timerLead is how far ahead of the fire-order timers' common start they
// are scheduled.
const timerLead = 100 * time.Millisecond

func runTimers(ctx context.Context, s *suite) *scenarioResult {
	n := s.timerCount
	res := &scenarioResult{
		Measures: fmt.Sprintf("In a child pinned to the server CPU with GOMAXPROCS=1: schedule %s timers (random deadlines 1–2 h, so none fires), then cancel them all in random order; "+
			"ns per operation, and heap bytes per pending timer. plugloop's run inside one callback on its loop thread (epoll backend). "+
			"Fire order: %s timers due within 200 ms of a common start %v away, scheduled in random order, must fire in deadline order (inversions counted at µs resolution and beyond 1 ms); "+
			"lateness = fire time − deadline.", thousands(float64(n)), thousands(float64(min(n/10, 100000))), timerLead),
	}
	os.Setenv(taskEnv+"_N", fmt.Sprint(n))
	defer os.Unsetenv(taskEnv + "_N")
	var rs []timerResult
	if err := runTaskChild(ctx, "timers", s.cfg.serverCPUs, 1, &rs); err != nil {
		s.unreachable("timers: %v", err)
		return nil
	}
	progress("  done\n")
	t := table{Header: []string{"implementation", "schedule ns/op", "cancel ns/op", "heap B/timer", "allocs/schedule", "fire order (inversions µs / >1 ms)", "late p50 µs", "late p99 µs"}}
	sch := chart{Title: fmt.Sprintf("schedule + cancel %s timers", thousands(float64(n))), Unit: "ns per schedule+cancel", LowerBetter: true}
	for _, r := range rs {
		order, p50, p99 := "not checked (callbacks run on goroutines)", "-", "-"
		if r.Fired > 0 {
			order = fmt.Sprintf("%d fired: %d / %d", r.Fired, r.FireInversions, r.FireInversions1ms)
			p50, p99 = fmt.Sprintf("%.0f", r.LateP50US), fmt.Sprintf("%.0f", r.LateP99US)
		}
		name := "plugloop"
		if strings.HasPrefix(r.Impl, "Go") {
			name = "Go runtime"
		}
		t.Rows = append(t.Rows, []string{r.Impl, fmt.Sprintf("%.0f", r.ScheduleNS), fmt.Sprintf("%.0f", r.CancelNS), fmt.Sprintf("%.0f", r.BytesPerTimer),
			fmt.Sprintf("%.2f", r.AllocsPerSchedule), order, p50, p99})
		sch.Bars = append(sch.Bars, bar{Label: name, Value: r.ScheduleNS + r.CancelNS})
	}
	res.Tables, res.Charts, res.Data = []table{t}, []chart{sch}, rs
	return res
}

// ---- scenario 5: wakeups ----

type wakeResult struct {
	Backend      string  `json:"backend"`
	Error        string  `json:"error,omitempty"`
	Samples      int     `json:"samples"`
	PostP50US    float64 `json:"post_p50_us"`
	PostP99US    float64 `json:"post_p99_us"`
	CancelP50US  float64 `json:"cancel_p50_us,omitempty"`
	CancelP99US  float64 `json:"cancel_p99_us,omitempty"`
	PostRate     float64 `json:"post_callbacks_per_sec"`
	CancelCalls  float64 `json:"cancel_calls_per_sec,omitempty"`
	CancelWakes  float64 `json:"cancel_callbacks_per_sec,omitempty"`
	WakesPerPost float64 `json:"wake_syscalls_per_post,omitempty"` // Stats.Wakes during the rate run
}

const (
	wakeSamples = 2000
	wakeGap     = 100 * time.Microsecond // lets the loop go back to sleep
	wakeRateFor = 300 * time.Millisecond
	chanName    = "go-channel"
)

// gap waits wakeGap without sleeping (a sleep costs the runtime a timer
// and often a millisecond), long enough for the loop to block again.
func gap() {
	t := time.Now()
	for time.Since(t) < wakeGap {
		runtime.Gosched()
	}
}

func pctl(v []float64, p int) float64 {
	slices.Sort(v)
	return v[min(len(v)*p/100, len(v)-1)]
}

func measureWakeup(backend string) (*wakeResult, error) {
	r := &wakeResult{Backend: backend, Samples: wakeSamples}
	if backend == chanName {
		return measureChanWakeup(r), nil
	}
	var cancelT0 atomic.Int64
	var cancels atomic.Int64
	got := make(chan time.Duration, 1)
	epoch := time.Now()
	proto := core.Protocol{Name: "wake", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonEventWaitCancelled {
			cancels.Add(1)
			if t0 := cancelT0.Swap(0); t0 != 0 {
				got <- time.Since(epoch) - time.Duration(t0)
			}
		}
		return nil
	}}
	l, err := startLoop(backend, proto)
	if err != nil {
		return nil, err
	}
	t := l.ctx.Thread(0)
	lat := make([]float64, wakeSamples)
	for i := range lat {
		gap()
		t0 := time.Now()
		t.Post(func() { got <- time.Since(t0) })
		lat[i] = float64(<-got) / 1e3
	}
	r.PostP50US, r.PostP99US = pctl(lat, 50), pctl(lat, 99)
	for i := range lat {
		gap()
		cancelT0.Store(int64(time.Since(epoch)))
		l.ctx.CancelService()
		lat[i] = float64(<-got) / 1e3
	}
	r.CancelP50US, r.CancelP99US = pctl(lat, 50), pctl(lat, 99)

	// Rates: Post as fast as one goroutine can, at most 4096 pending.
	var done atomic.Int64
	inc := func() { done.Add(1) }
	s0 := l.ctx.Stats()
	t0 := time.Now()
	posted := int64(0)
	for time.Since(t0) < wakeRateFor {
		if posted-done.Load() >= 4096 {
			runtime.Gosched()
			continue
		}
		t.Post(inc)
		posted++
	}
	for done.Load() < posted {
		runtime.Gosched()
	}
	el := time.Since(t0).Seconds()
	r.PostRate = float64(posted) / el
	r.WakesPerPost = float64(l.ctx.Stats().Wakes-s0.Wakes) / float64(posted)
	c0 := cancels.Load()
	t0 = time.Now()
	calls := 0
	for time.Since(t0) < wakeRateFor {
		l.ctx.CancelService()
		calls++
	}
	el = time.Since(t0).Seconds()
	time.Sleep(10 * time.Millisecond)
	r.CancelCalls, r.CancelWakes = float64(calls)/el, float64(cancels.Load()-c0)/el
	return r, l.stop()
}

// measureChanWakeup is the Go baseline: a goroutine blocked receiving
// from a channel.
func measureChanWakeup(r *wakeResult) *wakeResult {
	in := make(chan time.Time)
	got := make(chan time.Duration)
	go func() {
		for t0 := range in {
			got <- time.Since(t0)
		}
	}()
	lat := make([]float64, wakeSamples)
	for i := range lat {
		gap()
		in <- time.Now()
		lat[i] = float64(<-got) / 1e3
	}
	close(in)
	r.PostP50US, r.PostP99US = pctl(lat, 50), pctl(lat, 99)
	q := make(chan func(), 4096)
	var done atomic.Int64
	go func() {
		for f := range q {
			f()
		}
	}()
	inc := func() { done.Add(1) }
	t0 := time.Now()
	n := int64(0)
	for time.Since(t0) < wakeRateFor {
		q <- inc
		n++
	}
	close(q)
	for done.Load() < n {
		runtime.Gosched()
	}
	r.PostRate = float64(n) / time.Since(t0).Seconds()
	return r
}

func runWakeup(ctx context.Context, s *suite) *scenarioResult {
	res := &scenarioResult{
		Measures: fmt.Sprintf("In a child (GOMAXPROCS=2, on every CPU): another goroutine calls Thread.Post(f) or Context.CancelService() while the loop sleeps "+
			"(%v apart, %d samples each); latency = from the call to f, or to the EVENT_WAIT_CANCELLED callback, running on the loop. "+
			"Rate: one goroutine Posts as fast as it can (at most 4096 pending) for %v; CancelService calls coalesce, so calls/s and callbacks/s differ. "+
			"Baseline: a Go channel send to a goroutine blocked receiving (gnet and netpoll have no loop-level equivalent).", wakeGap, wakeSamples, wakeRateFor),
	}
	var names []string
	if s.cfg.target == "" {
		for _, sv := range s.cfg.servers {
			if sv.Backend != "" {
				names = append(names, sv.Backend)
			}
		}
	}
	names = append(names, chanName)
	t := table{Header: []string{"backend", "Post p50 µs", "Post p99 µs", "CancelService p50 µs", "p99 µs", "Post callbacks/s", "wake syscalls/Post", "CancelService calls/s", "callbacks/s"}}
	p50 := chart{Title: "Post → callback latency on the loop, p50 (p99 in the table)", Unit: "µs", LowerBetter: true}
	rate := chart{Title: "Post throughput, one posting goroutine", Unit: "callbacks/s"}
	var data []*wakeResult
	// Every CPU: a child inherits this process' affinity, which pinning
	// narrowed to the load generator's CPU; the poster and the loop would
	// then share one CPU, and the rates measure the scheduler's turns.
	all := slices.Concat(s.cfg.serverCPUs, s.cfg.clientCPUs)
	for _, b := range names {
		if ctx.Err() != nil {
			break
		}
		var r wakeResult
		if err := runTaskChild(ctx, "wakeup:"+b, all, 2, &r); err != nil {
			if ctx.Err() != nil {
				break
			}
			r = wakeResult{Backend: b, Error: err.Error()}
		}
		label := plugloopPrefix + b
		if b == chanName {
			label = chanName
		}
		if r.Error != "" {
			progress("  %-17s error: %s\n", label, r.Error)
			t.failed(label, r.Error)
			continue
		}
		progress("  %-17s Post p50 %.1f µs p99 %.1f µs, %s/s\n", label, r.PostP50US, r.PostP99US, thousands(r.PostRate))
		data = append(data, &r)
		row := []string{label, fmt.Sprintf("%.1f", r.PostP50US), fmt.Sprintf("%.1f", r.PostP99US), "-", "-", thousands(r.PostRate), "-", "-", "-"}
		if b != chanName {
			row[3], row[4] = fmt.Sprintf("%.1f", r.CancelP50US), fmt.Sprintf("%.1f", r.CancelP99US)
			row[6], row[7], row[8] = fmt.Sprintf("%.3f", r.WakesPerPost), thousands(r.CancelCalls), thousands(r.CancelWakes)
		}
		t.Rows = append(t.Rows, row)
		p50.Bars = append(p50.Bars, bar{Label: label, Value: r.PostP50US})
		rate.Bars = append(rate.Bars, bar{Label: label, Value: r.PostRate, Text: thousands(r.PostRate)})
	}
	t.Notes = append(t.Notes, "wake syscalls/Post: the core's wake-fd signals (Stats.Wakes) per Post during the rate run: Posts that find the loop busy cost none.")
	res.Tables, res.Charts, res.Data = []table{t}, []chart{p50, rate}, data
	return res
}
