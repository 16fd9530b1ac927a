//go:build unix

package main

// The churn scenario: short connections, each opened, used for one echo
// and closed, as HTTP/1.0 clients and many RPC clients use a server. What
// it measures is what a server spends on a connection's life: accept, its
// setup in the server and the backend, the first read and write, the end
// of stream, the close.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// churnMsg is the one message each connection echoes.
const churnMsg = 64

type churnResult struct {
	Server          string  `json:"server"`
	Error           string  `json:"error,omitempty"`
	ConnsPerSec     float64 `json:"conns_per_sec"`
	CPUUSPerConn    float64 `json:"server_cpu_us_per_conn"`
	CPUPct          float64 `json:"server_cpu_pct"`
	ClientCPUPct    float64 `json:"client_cpu_pct"`
	SyscallsPerConn float64 `json:"syscalls_per_conn,omitempty"` // plugloop Stats
	AcceptsPerConn  float64 `json:"accepts_per_conn,omitempty"`  // accept(2) calls, failed ones too (plugloop Stats)
	PeakRSSMB       float64 `json:"server_peak_rss_mb"`
	OtherCPU        float64 `json:"other_cpu_pct"`
}

// churnClients runs clients goroutines, each opening connections one after
// another: dial, write churnMsg bytes, read them back, check them, close.
type churnClients struct {
	each counters // connections completed, per client
	wg   sync.WaitGroup
	firstError
}

func startChurn(ctx context.Context, addr string, clients int) *churnClients {
	c := &churnClients{each: make(counters, clients), firstError: firstError{prefix: "churn client"}}
	for i := range clients {
		c.wg.Add(1)
		go c.client(ctx, addr, churnDialer(addr, i), &c.each[i])
	}
	return c
}

func (c *churnClients) client(ctx context.Context, addr string, d net.Dialer, cnt *counter) {
	defer c.wg.Done()
	msg := bytes.Repeat([]byte{'c'}, churnMsg)
	got := make([]byte, churnMsg)
	for !c.stop.Load() {
		if _, err := echoOnce(ctx, &d, addr, msg, got); err != nil {
			c.fail(err)
			return
		}
		cnt.n.Add(1)
	}
}

// echoOnce dials addr, writes msg, reads its echo into got, checks it and
// closes the connection; it reports when the echo was in, before the
// close. The client closes first, so the TIME_WAIT is the client's (see
// churnDialer), and Linux reuses one for a new loopback connection once it
// is a second old (the default of net.ipv4.tcp_tw_reuse).
func echoOnce(ctx context.Context, d *net.Dialer, addr string, msg, got []byte) (echoed time.Time, err error) {
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close()
	err = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err == nil {
		_, err = conn.Write(msg)
	}
	if err == nil {
		_, err = io.ReadFull(conn, got)
	}
	if err == nil && !bytes.Equal(got, msg) {
		err = errors.New("echo returned different bytes")
	}
	return time.Now(), err
}

func (c *churnClients) close() {
	c.stop.Store(true)
	c.wg.Wait()
}

func runChurn(ctx context.Context, s *suite) *scenarioResult {
	res := &scenarioResult{
		Measures: fmt.Sprintf("%d client goroutines, each opening connections one after another: connect, write %d B, read the echo, close (the client closes first). "+
			"conns/s = connections completed per second; the figure to compare is the server's CPU per connection (user+sys of the server child), "+
			"which pays for accept, the connection's setup and teardown in the server, one read and one write, the end of stream and the close; "+
			"a connection costs its client more CPU than the server, most of it in the kernel (connect, and the TIME_WAIT of the side that closes first), so the clients set the rate. syscalls/conn and accepts/conn (accept(2) calls, the ones that found the queue empty too): plugloop's Stats.",
			s.churnClients, churnMsg),
	}
	if need := fdsFor(2 * s.churnClients); need > s.cfg.fdLimit {
		s.unreachable("churn: %d clients need %d fds, the limit is %d", s.churnClients, need, s.cfg.fdLimit)
		return nil
	}
	runs := eachServer(ctx, s.servers(), s.repeats(), func(sv serverInfo, _ int) churnResult {
		return s.churnOne(ctx, sv.Name)
	}, func(r churnResult) string {
		if r.Error != "" {
			return "error: " + r.Error
		}
		return fmt.Sprintf("%7.0f conns/s  %6.1f µs CPU/conn  others %.0f%% CPU", r.ConnsPerSec, r.CPUUSPerConn, r.OtherCPU)
	})
	t := table{Header: []string{"server", "conns/s", "server CPU µs/conn", "server CPU %", "client CPU %", "syscalls/conn", "accepts/conn", "peak RSS MB", "others %CPU"}}
	rate := chart{Title: fmt.Sprintf("connection churn, %d clients, one %d B echo per connection", s.churnClients, churnMsg), Unit: "conns/s"}
	cpu := chart{Title: "server CPU per connection", Unit: "µs/conn", LowerBetter: true}
	var data []churnResult
	for _, sv := range s.servers() {
		rs := runs[sv.Name]
		if len(rs) == 0 {
			continue
		}
		data = append(data, rs...)
		m, errs := medianChurn(sv.Name, rs)
		if m == nil {
			t.failed(sv.Name, errs)
			continue
		}
		row := []string{sv.Name, fmt.Sprintf("%.0f", m.ConnsPerSec), fmt.Sprintf("%.1f", m.CPUUSPerConn), fmt.Sprintf("%.0f", m.CPUPct),
			fmt.Sprintf("%.0f", m.ClientCPUPct), dash(m.SyscallsPerConn, "%.1f"), dash(m.AcceptsPerConn, "%.2f"),
			fmt.Sprintf("%.1f", m.PeakRSSMB), fmt.Sprintf("%.0f", m.OtherCPU)}
		if s.cfg.target != "" {
			row[2], row[3], row[7], row[8] = "-", "-", "-", "-"
		}
		t.Rows = append(t.Rows, row)
		rate.Bars = append(rate.Bars, bar{Label: sv.Name, Value: m.ConnsPerSec})
		cpu.Bars = append(cpu.Bars, bar{Label: sv.Name, Value: m.CPUUSPerConn})
	}
	res.Tables = []table{t}
	res.Charts = []chart{rate}
	if s.cfg.target == "" {
		res.Charts = append(res.Charts, cpu)
	}
	res.Data = data
	return res
}

// medianChurn takes the median of each figure over the successful runs.
func medianChurn(name string, rs []churnResult) (*churnResult, string) {
	ok, errs := okRuns(rs, func(r churnResult) string { return r.Error })
	if len(ok) == 0 {
		return nil, errs
	}
	med := func(f func(churnResult) float64) float64 { return medianOf(ok, f) }
	return &churnResult{
		Server: name, ConnsPerSec: med(func(r churnResult) float64 { return r.ConnsPerSec }),
		CPUUSPerConn:    med(func(r churnResult) float64 { return r.CPUUSPerConn }),
		CPUPct:          med(func(r churnResult) float64 { return r.CPUPct }),
		ClientCPUPct:    med(func(r churnResult) float64 { return r.ClientCPUPct }),
		SyscallsPerConn: med(func(r churnResult) float64 { return r.SyscallsPerConn }),
		AcceptsPerConn:  med(func(r churnResult) float64 { return r.AcceptsPerConn }),
		PeakRSSMB:       med(func(r churnResult) float64 { return r.PeakRSSMB }),
		OtherCPU:        med(func(r churnResult) float64 { return r.OtherCPU }),
	}, errs
}

func (s *suite) churnOne(ctx context.Context, name string) (res churnResult) {
	res.Server = name
	ch, err := startChild(ctx, s.cfg, name, "")
	if err != nil {
		res.Error = "start: " + err.Error()
		return res
	}
	defer ch.kill()
	cl := startChurn(ctx, ch.hello.Addr, s.churnClients)
	defer cl.close()
	fail := func(err error) churnResult {
		if e := cl.Err(); e != nil {
			err = e
		}
		res.Error = ch.failure(err).Error()
		return res
	}
	if err := sleep(ctx, s.cfg.warmup); err != nil {
		return fail(err)
	}
	w, err := s.measureWindow(ctx, ch, cl.each)
	if err != nil {
		return fail(err)
	}
	if err := cl.Err(); err != nil {
		return fail(err)
	}
	if w.stalled > 0 {
		return fail(fmt.Errorf("%d of %d clients completed no connection in the measured window: the server stalled them", w.stalled, s.churnClients))
	}
	conns := float64(w.done)
	if conns <= 0 || w.wallNS <= 0 {
		return fail(errors.New("no connection completed"))
	}
	res.ConnsPerSec = conns / (float64(w.wallNS) / 1e9)
	res.CPUUSPerConn = float64(w.cpuNS) / 1e3 / conns
	res.CPUPct = w.pct(w.cpuNS)
	res.ClientCPUPct = w.pct(w.cw.clientNS())
	if st := w.u.Stats; st != nil && w.childDone > 0 { // over the child's window
		res.SyscallsPerConn = float64(st.Syscalls) / w.childDone
		res.AcceptsPerConn = float64(st.Accepts) / w.childDone
	}
	res.PeakRSSMB = float64(w.u.MaxRSSKB) / 1024
	res.OtherCPU, _ = w.cw.otherPct(w.cpuNS, w.wallNS)
	cl.close()
	ch.stop()
	return res
}
