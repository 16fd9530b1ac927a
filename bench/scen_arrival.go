//go:build unix

package main

// The arrival scenario: how long a new connection waits for its first echo
// while the server is busy with others. Round trips on connections that
// are open already measure the loop's own path; a connection that arrives
// meanwhile also needs the listener's readiness to reach the loop, which a
// backend may learn of by another path (the netpoll adapter's listeners
// wait in Go's runtime poller, beside netpoll's own).

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"time"
)

const (
	arrivalLoadConns = 50                   // busy connections, 64 B ping-pong each
	arrivalProbes    = 100                  // new connections, one at a time (suite.arrivals)
	arrivalGap       = 5 * time.Millisecond // between two new connections
)

type arrivalResult struct {
	Server       string  `json:"server"`
	Error        string  `json:"error,omitempty"`
	P50US        float64 `json:"p50_us"`
	P90US        float64 `json:"p90_us"`
	P99US        float64 `json:"p99_us"`
	MaxUS        float64 `json:"max_us"`
	LoadRTPerSec float64 `json:"load_round_trips_per_sec"`
}

func runArrival(ctx context.Context, s *suite) *scenarioResult {
	res := &scenarioResult{
		Measures: fmt.Sprintf("While %d connections ping-pong 64 B messages (closed loop, the ping-pong's load generator), %d new connections arrive one at a time, %v apart: "+
			"each is dialled, echoes %d B once and is closed. Latency = dial to the echo read back, in µs; load rt/s = the busy connections' round trips meanwhile. "+
			"A server that learns of its listener's readiness late under load shows it here, not in the ping-pong.",
			arrivalLoadConns, s.arrivalCount(), arrivalGap, churnMsg),
	}
	runs := eachServer(ctx, s.servers(), s.repeats(), func(sv serverInfo, _ int) arrivalResult {
		return s.arrivalOne(ctx, sv.Name)
	}, func(r arrivalResult) string {
		if r.Error != "" {
			return "error: " + r.Error
		}
		return fmt.Sprintf("new connection p50 %7.0f µs  p99 %7.0f µs  load %7.0f rt/s", r.P50US, r.P99US, r.LoadRTPerSec)
	})
	t := table{Header: []string{"server", "p50 µs", "p90 µs", "p99 µs", "max µs", "load rt/s"}}
	p50 := chart{Title: fmt.Sprintf("a new connection's dial and first echo beside %d busy ones, p50", arrivalLoadConns), Unit: "µs", LowerBetter: true}
	var data []arrivalResult
	for _, sv := range s.servers() {
		rs := runs[sv.Name]
		if len(rs) == 0 {
			continue
		}
		data = append(data, rs...)
		ok, errs := okRuns(rs, func(r arrivalResult) string { return r.Error })
		if len(ok) == 0 {
			t.failed(sv.Name, errs)
			continue
		}
		med := func(f func(arrivalResult) float64) float64 { return medianOf(ok, f) }
		m := arrivalResult{
			P50US: med(func(r arrivalResult) float64 { return r.P50US }), P90US: med(func(r arrivalResult) float64 { return r.P90US }),
			P99US: med(func(r arrivalResult) float64 { return r.P99US }), MaxUS: med(func(r arrivalResult) float64 { return r.MaxUS }),
			LoadRTPerSec: med(func(r arrivalResult) float64 { return r.LoadRTPerSec }),
		}
		t.Rows = append(t.Rows, []string{sv.Name, fmt.Sprintf("%.0f", m.P50US), fmt.Sprintf("%.0f", m.P90US),
			fmt.Sprintf("%.0f", m.P99US), fmt.Sprintf("%.0f", m.MaxUS), fmt.Sprintf("%.0f", m.LoadRTPerSec)})
		p50.Bars = append(p50.Bars, bar{Label: sv.Name, Value: m.P50US})
	}
	res.Tables = []table{t}
	res.Charts = []chart{p50}
	res.Data = data
	return res
}

func (s *suite) arrivalCount() int {
	if s.arrivals > 0 {
		return s.arrivals
	}
	return arrivalProbes
}

func (s *suite) arrivalOne(ctx context.Context, name string) (res arrivalResult) {
	res.Server = name
	ch, err := startChild(ctx, s.cfg, name, "")
	if err != nil {
		res.Error = "start: " + err.Error()
		return res
	}
	defer ch.kill()
	fail := func(err error) arrivalResult {
		res.Error = ch.failure(err).Error()
		return res
	}
	cfg := *s.cfg
	cfg.conns, cfg.size, cfg.loadWait = arrivalLoadConns, churnMsg, uringWait(arrivalLoadConns)
	load, err := startLoader(ctx, &cfg, ch.hello.Addr, time.Minute)
	if err != nil {
		return fail(err)
	}
	defer load.close()
	if err := sleep(ctx, s.cfg.warmup); err != nil {
		return fail(err)
	}
	msg, got := bytes.Repeat([]byte{'a'}, churnMsg), make([]byte, churnMsg)
	d := net.Dialer{Timeout: 5 * time.Second}
	lat := make([]time.Duration, 0, s.arrivalCount())
	r0, t0 := load.total(), time.Now()
	for range s.arrivalCount() {
		start := time.Now()
		echoed, err := echoOnce(ctx, &d, ch.hello.Addr, msg, got)
		if err != nil {
			return fail(err)
		}
		lat = append(lat, echoed.Sub(start))
		if err := sleep(ctx, arrivalGap); err != nil {
			return fail(err)
		}
	}
	res.LoadRTPerSec = float64(load.total()-r0) / time.Since(t0).Seconds()
	if err := load.Err(); err != nil {
		return fail(err)
	}
	slices.Sort(lat)
	us := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e3 }
	res.P50US, res.P90US, res.P99US, res.MaxUS = us(0.5), us(0.9), us(0.99), us(1)
	return res
}
