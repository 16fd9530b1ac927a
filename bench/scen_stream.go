//go:build unix

package main

// Scenarios 2, 3 and 6, which drive the server children with plain
// sockets: streaming echo, idle connections, slow consumers.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// procRSSKB reads a process's resident set (VmRSS) in KiB.
func procRSSKB(pid int) (int64, error) { return procStatusKB(pid, "VmRSS") }

// procStatusKB reads a figure in KiB, such as VmRSS, from a process's
// /proc status.
func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no " + field)
}

// streamConns is a set of connections, each with a writer goroutine
// writing a position-dependent pattern as fast as the kernel takes it and
// a reader goroutine checking and counting the echo, optionally rate
// limited (a slow consumer).
type streamConns struct {
	conns   []net.Conn
	each    counters // bytes read, per connection
	written atomic.Int64
	wg      sync.WaitGroup
	firstError
}

// read returns the bytes all connections have read so far.
func (s *streamConns) read() int64 { return int64(s.each.sum()) }

const patternLen = 251

func startStream(ctx context.Context, addr string, n, chunk int, rate float64) (*streamConns, error) {
	s := &streamConns{}
	d := net.Dialer{Timeout: 5 * time.Second}
	for range n {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("connection %d: %w", len(s.conns)+1, err)
		}
		s.conns = append(s.conns, c)
	}
	pat := make([]byte, patternLen+chunk)
	for i := range pat {
		pat[i] = byte(i % patternLen)
	}
	s.each = make(counters, len(s.conns))
	for i, c := range s.conns {
		s.wg.Add(2)
		go s.writer(c, pat, chunk)
		go s.reader(c, &s.each[i], chunk, rate)
	}
	return s, nil
}

func (s *streamConns) writer(c net.Conn, pat []byte, chunk int) {
	defer s.wg.Done()
	off := 0
	for !s.stop.Load() {
		n, err := c.Write(pat[off : off+chunk])
		s.written.Add(int64(n))
		if err != nil {
			s.fail(err)
			return
		}
		off = (off + n) % patternLen
	}
}

// reader reads the echo and checks the first and last byte of every read
// against the pattern; with rate > 0 it reads at most rate bytes/s.
func (s *streamConns) reader(c net.Conn, cnt *counter, chunk int, rate float64) {
	defer s.wg.Done()
	buf := make([]byte, chunk)
	q := chunk
	var next time.Time
	if rate > 0 {
		q = max(int(rate/100), 1) // a 10 ms quantum
		next = time.Now()
	}
	var off int64
	for !s.stop.Load() {
		var n int
		var err error
		if rate > 0 {
			n, err = io.ReadFull(c, buf[:q])
		} else {
			n, err = c.Read(buf)
		}
		if n > 0 {
			if buf[0] != byte(off%patternLen) || buf[n-1] != byte((off+int64(n)-1)%patternLen) {
				s.fail(errors.New("echo returned different bytes"))
				return
			}
			off += int64(n)
			cnt.n.Add(uint64(n))
		}
		if err != nil {
			s.fail(err)
			return
		}
		if rate > 0 {
			next = next.Add(time.Duration(float64(n) / rate * 1e9))
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
		}
	}
}

func (s *streamConns) close() {
	s.stop.Store(true)
	for _, c := range s.conns {
		c.Close()
	}
	s.wg.Wait()
}

// ---- scenario 2: streaming echo ----

type streamResult struct {
	Server        string  `json:"server"`
	Error         string  `json:"error,omitempty"`
	MBPerSec      float64 `json:"echoed_mb_per_sec"` // MB = 10^6 bytes, echoed back to the clients
	CPUUSPerMB    float64 `json:"server_cpu_us_per_mb"`
	CPUPct        float64 `json:"server_cpu_pct"`
	ClientCPUPct  float64 `json:"client_cpu_pct"`
	SyscallsPerMB float64 `json:"syscalls_per_mb,omitempty"` // plugloop Stats
	SplicesPerMB  float64 `json:"splices_per_mb,omitempty"`  // of them, relays' splice(2) (the relay scenario)
	RelayedPerMB  float64 `json:"relayed_per_mb,omitempty"`  // bytes relays moved per byte echoed (the relay scenario)
	// PerfSyscallsPerMB counts every system call of any server (-perf).
	PerfSyscallsPerMB float64 `json:"perf_syscalls_per_mb,omitempty"`
	PerfError         string  `json:"perf_error,omitempty"`
	PeakRSSMB         float64 `json:"server_peak_rss_mb"`
	OtherCPU          float64 `json:"other_cpu_pct"`
}

const streamChunk = 16 << 10

func runStream(ctx context.Context, s *suite) *scenarioResult {
	res := &scenarioResult{
		Measures: fmt.Sprintf("%d connections, each with a writer pushing %d KiB writes as fast as the server takes them and a reader consuming the echo "+
			"(many messages in flight, bounded only by the socket buffers and the server's own buffering). MB/s = 10^6 bytes echoed back per second; "+
			"server CPU µs per MB echoed (user+sys of the server child); syscalls per MB: plugloop's Stats.", s.streamConns, streamChunk>>10),
	}
	if need := fdsFor(s.streamConns); need > s.cfg.fdLimit {
		s.unreachable("stream: %d connections need %d fds, the limit is %d", s.streamConns, need, s.cfg.fdLimit)
		return nil
	}
	runs := eachServer(ctx, s.servers(), s.repeats(), func(sv serverInfo, _ int) streamResult {
		return s.streamOne(ctx, sv.Name)
	}, func(r streamResult) string {
		if r.Error != "" {
			return "error: " + r.Error
		}
		return fmt.Sprintf("%7.1f MB/s  %7.0f µs CPU/MB  others %.0f%% CPU", r.MBPerSec, r.CPUUSPerMB, r.OtherCPU)
	})
	t := table{Header: []string{"server", "MB/s echoed", "server CPU µs/MB", "server CPU %", "client CPU %", "syscalls/MB", "peak RSS MB", "others %CPU"}}
	if s.cfg.perfPath != "" {
		t.Header = append(t.Header, "perf syscalls/MB")
		res.Measures += " perf syscalls/MB: every system call of each server over the measured window (perf stat, syscall tracepoints)."
	}
	mbs := chart{Title: fmt.Sprintf("streaming echo throughput, %d conns × %d KiB writes", s.streamConns, streamChunk>>10), Unit: "MB/s"}
	cpu := chart{Title: "server CPU per MB echoed", Unit: "µs/MB", LowerBetter: true}
	var data []streamResult
	for _, sv := range s.servers() {
		rs := runs[sv.Name]
		if len(rs) == 0 {
			continue
		}
		m, errs := medianStream(sv.Name, rs)
		data = append(data, rs...)
		if m == nil {
			t.failed(sv.Name, errs)
			continue
		}
		row := []string{sv.Name, fmt.Sprintf("%.1f", m.MBPerSec), fmt.Sprintf("%.0f", m.CPUUSPerMB), fmt.Sprintf("%.0f", m.CPUPct),
			fmt.Sprintf("%.0f", m.ClientCPUPct), dash(m.SyscallsPerMB, "%.0f"), fmt.Sprintf("%.1f", m.PeakRSSMB), fmt.Sprintf("%.0f", m.OtherCPU)}
		if s.cfg.target != "" {
			row[2], row[3], row[6] = "-", "-", "-"
		}
		if s.cfg.perfPath != "" {
			row = append(row, dash(m.PerfSyscallsPerMB, "%.0f"))
		}
		t.Rows = append(t.Rows, row)
		mbs.Bars = append(mbs.Bars, bar{Label: sv.Name, Value: m.MBPerSec})
		cpu.Bars = append(cpu.Bars, bar{Label: sv.Name, Value: m.CPUUSPerMB})
	}
	res.Tables = []table{t}
	res.Charts = []chart{mbs}
	if s.cfg.target == "" {
		res.Charts = append(res.Charts, cpu)
	}
	res.Data = data
	return res
}

// medianStream takes the median of each figure over the successful runs.
func medianStream(name string, rs []streamResult) (*streamResult, string) {
	ok, errs := okRuns(rs, func(r streamResult) string { return r.Error })
	if len(ok) == 0 {
		return nil, errs
	}
	med := func(f func(streamResult) float64) float64 { return medianOf(ok, f) }
	return &streamResult{
		Server: name, MBPerSec: med(func(r streamResult) float64 { return r.MBPerSec }),
		CPUUSPerMB:        med(func(r streamResult) float64 { return r.CPUUSPerMB }),
		CPUPct:            med(func(r streamResult) float64 { return r.CPUPct }),
		ClientCPUPct:      med(func(r streamResult) float64 { return r.ClientCPUPct }),
		SyscallsPerMB:     med(func(r streamResult) float64 { return r.SyscallsPerMB }),
		SplicesPerMB:      med(func(r streamResult) float64 { return r.SplicesPerMB }),
		RelayedPerMB:      med(func(r streamResult) float64 { return r.RelayedPerMB }),
		PerfSyscallsPerMB: med(func(r streamResult) float64 { return r.PerfSyscallsPerMB }),
		PeakRSSMB:         med(func(r streamResult) float64 { return r.PeakRSSMB }),
		OtherCPU:          med(func(r streamResult) float64 { return r.OtherCPU }),
	}, errs
}

func (s *suite) streamOne(ctx context.Context, name string) (res streamResult) {
	ch, err := startChild(ctx, s.cfg, name, "")
	if err != nil {
		return streamResult{Server: name, Error: "start: " + err.Error()}
	}
	return s.measureStream(ctx, ch, name, s.streamConns, streamChunk)
}

// measureStream runs conns streams of chunk-sized writes through the
// server child ch (an echo server, or a proxy in front of one) and
// measures the server over the window; it stops ch.
func (s *suite) measureStream(ctx context.Context, ch *child, name string, conns, chunk int) (res streamResult) {
	res.Server = name
	defer ch.kill()
	st, err := startStream(ctx, ch.hello.Addr, conns, chunk, 0)
	if err != nil {
		res.Error = ch.failure(err).Error()
		return res
	}
	defer st.close()
	fail := func(err error) streamResult {
		if e := st.Err(); e != nil {
			err = e
		}
		res.Error = ch.failure(err).Error()
		return res
	}
	if err := sleep(ctx, s.cfg.warmup); err != nil {
		return fail(err)
	}
	var pc *perfCounter
	if s.cfg.perfPath != "" && ch.cmd != nil {
		var err error
		if pc, err = enablePerf(ctx, s.cfg.perfPath, ch.cmd.Process.Pid, nil); err != nil {
			res.PerfError = err.Error()
		} else {
			defer pc.abort()
		}
	}
	w, err := s.measureWindow(ctx, ch, st.each)
	if pc != nil && err == nil {
		n, err := pc.stop(ctx, nil)
		if err != nil {
			res.PerfError = err.Error()
		} else if w.done > 0 {
			res.PerfSyscallsPerMB = float64(n.Total) / (float64(w.done) / 1e6)
		}
	}
	if err != nil {
		return fail(err)
	}
	if err := st.Err(); err != nil {
		return fail(err)
	}
	if w.stalled > 0 {
		return fail(fmt.Errorf("%d of %d connections had nothing echoed in the measured window: the server stalled them", w.stalled, conns))
	}
	mb := float64(w.done) / 1e6
	if mb <= 0 || w.wallNS <= 0 {
		return fail(errors.New("nothing echoed"))
	}
	res.MBPerSec = mb / (float64(w.wallNS) / 1e9)
	res.CPUUSPerMB = float64(w.cpuNS) / 1e3 / mb
	res.CPUPct = w.pct(w.cpuNS)
	res.ClientCPUPct = w.pct(w.cw.clientNS())
	if st := w.u.Stats; st != nil && w.childDone > 0 { // over the child's window
		childMB := w.childDone / 1e6
		res.SyscallsPerMB = float64(st.Syscalls) / childMB
		res.SplicesPerMB = float64(st.Splices) / childMB
		res.RelayedPerMB = float64(st.Relayed) / childMB
	}
	res.PeakRSSMB = float64(w.u.MaxRSSKB) / 1024
	res.OtherCPU, _ = w.cw.otherPct(w.cpuNS, w.wallNS)
	st.close()
	ch.stop()
	return res
}

// ---- scenario 3: idle connections ----

type idleResult struct {
	Server      string  `json:"server"`
	Error       string  `json:"error,omitempty"`
	Conns       int     `json:"conns"`           // connections held (and measured)
	Short       string  `json:"short,omitempty"` // why fewer than asked for were held
	RSSBeforeKB int64   `json:"rss_before_kb"`
	RSSAfterKB  int64   `json:"rss_after_kb"`
	KBPerConn   float64 `json:"kb_per_conn"`
	ConnectSec  float64 `json:"connect_seconds"`
}

func runIdle(ctx context.Context, s *suite) *scenarioResult {
	n := s.idleConns
	res := &scenarioResult{
		Measures: fmt.Sprintf("The server child's resident set (VmRSS) before and after %s connections are opened and each has echoed one byte "+
			"(so every server has set up its per-connection state), then left idle; KiB per connection = the difference / the connections held "+
			"(%s, unless a server stopped taking them sooner).", thousands(float64(n)), thousands(float64(n))),
	}
	if s.cfg.target != "" {
		s.unreachable("idle: needs the server's RSS, so not with -target")
		return nil
	}
	if need := fdsFor(n); need > s.cfg.fdLimit {
		s.unreachable("idle: %d connections need %d fds per process, the limit is %d (raise ulimit -n)", n, need, s.cfg.fdLimit)
		return nil
	}
	runs := eachServer(ctx, s.servers(), 1, func(sv serverInfo, _ int) idleResult {
		return s.idleOne(ctx, sv.Name, n)
	}, func(r idleResult) string {
		if r.Error != "" {
			return "error: " + r.Error
		}
		return fmt.Sprintf("RSS %.1f → %.1f MB, %.2f KiB/conn", float64(r.RSSBeforeKB)/1024, float64(r.RSSAfterKB)/1024, r.KBPerConn)
	})
	t := table{Header: []string{"server", "connections", "RSS before MB", "RSS after MB", "KiB per connection", "connect+echo s"}}
	ch := chart{Title: fmt.Sprintf("server memory per idle connection (%s conns)", thousands(float64(n))), Unit: "KiB", LowerBetter: true}
	var data []idleResult
	for _, sv := range s.servers() {
		for _, r := range runs[sv.Name] {
			data = append(data, r)
			if r.Error != "" {
				t.failed(sv.Name, r.Error)
				continue
			}
			if r.Short != "" {
				t.Notes = append(t.Notes, fmt.Sprintf("! %s held %s of %s connections: %s", sv.Name, thousands(float64(r.Conns)), thousands(float64(n)), r.Short))
			}
			t.Rows = append(t.Rows, []string{sv.Name, thousands(float64(r.Conns)), fmt.Sprintf("%.1f", float64(r.RSSBeforeKB)/1024),
				fmt.Sprintf("%.1f", float64(r.RSSAfterKB)/1024), fmt.Sprintf("%.2f", r.KBPerConn), fmt.Sprintf("%.2f", r.ConnectSec)})
			ch.Bars = append(ch.Bars, bar{Label: sv.Name, Value: r.KBPerConn})
		}
	}
	t.Notes = append(t.Notes, "kernel socket memory is not in RSS; net's figure is mostly its 32 KiB read buffer and goroutine stack per connection.")
	res.Tables, res.Charts, res.Data = []table{t}, []chart{ch}, data
	return res
}

// heldShort is idleConnect's error when a connection got no echo within
// its read timeout while those before it did: the server stopped taking
// connections (its fd limit, say) rather than failing.
type heldShort struct{ echoed int }

func (e *heldShort) Error() string {
	return fmt.Sprintf("%d connections echoed, the next got no echo within 5 s", e.echoed)
}

func (s *suite) idleOne(ctx context.Context, name string, n int) (res idleResult) {
	res.Server, res.Conns = name, n
	ch, err := startChild(ctx, s.cfg, name, "")
	if err != nil {
		res.Error = "start: " + err.Error()
		return res
	}
	defer ch.kill()
	pid := ch.cmd.Process.Pid
	time.Sleep(100 * time.Millisecond)
	if res.RSSBeforeKB, err = procRSSKB(pid); err != nil {
		res.Error = err.Error()
		return res
	}
	t0 := time.Now()
	fds, err := idleConnect(ctx, ch.hello.Addr, n)
	defer func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}()
	held := n
	if err != nil {
		var short *heldShort
		if !errors.As(err, &short) {
			res.Error = ch.failure(fmt.Errorf("after %d connections: %w", len(fds), err)).Error()
			return res
		}
		// The server stopped short (its fd limit): measure what it holds,
		// and say why it stopped.
		held = short.echoed
		res.Short = ch.failure(err).Error()
	}
	res.Conns = held
	res.ConnectSec = time.Since(t0).Seconds()
	time.Sleep(300 * time.Millisecond)
	if res.RSSAfterKB, err = procRSSKB(pid); err != nil {
		res.Error = err.Error()
		return res
	}
	res.KBPerConn = float64(res.RSSAfterKB-res.RSSBeforeKB) / float64(max(held, 1))
	ch.stop()
	return res
}

// ---- scenario 6: slow consumer ----

type slowResult struct {
	Server     string    `json:"server"`
	Error      string    `json:"error,omitempty"`
	StartMB    float64   `json:"rss_start_mb"` // after connecting
	EndMB      float64   `json:"rss_end_mb"`
	MaxMB      float64   `json:"rss_max_mb"`
	GrowthMBps float64   `json:"rss_growth_mb_per_sec_second_half"`
	Plateau    bool      `json:"plateaued"`
	Capped     bool      `json:"capped"` // stopped at slowCapMB
	Seconds    []float64 `json:"t_seconds"`
	RSSMB      []float64 `json:"rss_mb"`
	ReadMBps   float64   `json:"client_read_mb_per_sec"`
}

const (
	slowRate  = 1 << 20 // bytes/s each client reads
	slowChunk = 64 << 10
	slowCapMB = 1024
)

func (s *suite) slowServers() []serverInfo {
	if s.full || s.cfg.target != "" || s.cfg.serversChosen {
		return s.servers() // -full, or -servers chose
	}
	var out []serverInfo
	for _, sv := range s.cfg.servers {
		if slices.Contains([]string{plugloopPrefix + "epoll", plugloopPrefix + "gnet", plugloopPrefix + "netpoll", gnetName, netpollName, netName}, sv.Name) {
			out = append(out, sv)
		}
	}
	return out
}

func (s *suite) slowDuration() time.Duration {
	if s.slowDur > 0 {
		return s.slowDur
	}
	if s.full {
		return 6 * time.Second
	}
	return 2 * time.Second
}

func runSlow(ctx context.Context, s *suite) *scenarioResult {
	d := s.slowDuration()
	res := &scenarioResult{
		Measures: fmt.Sprintf("%d connections; each client writes %d KiB chunks as fast as the server accepts them but reads the echo at only %d KiB/s "+
			"(token bucket), so the server holds what it cannot send. Its RSS is sampled every 100 ms for %v: a server with rx flow control stops reading "+
			"and stays flat; one that buffers without limit grows (stopped at %d MB). plateaued = RSS at the end within 10%% (+2 MB) of the RSS half-way.",
			s.slowConns, slowChunk>>10, slowRate>>10, d, slowCapMB),
	}
	if s.cfg.target != "" {
		s.unreachable("slow: needs the server's RSS, so not with -target")
		return nil
	}
	runs := eachServer(ctx, s.slowServers(), 1, func(sv serverInfo, _ int) slowResult {
		return s.slowOne(ctx, sv.Name, d)
	}, func(r slowResult) string {
		if r.Error != "" {
			return "error: " + r.Error
		}
		return fmt.Sprintf("RSS %.1f → %.1f MB (max %.1f), %+.1f MB/s, plateaued %v", r.StartMB, r.EndMB, r.MaxMB, r.GrowthMBps, r.Plateau)
	})
	t := table{Header: []string{"server", "RSS start MB", "RSS end MB", "RSS max MB", "growth MB/s (2nd half)", "plateaued", "clients read MB/s"}}
	rss := chart{Title: "slow consumers: server RSS over time", Unit: "MB", XUnit: "s", LowerBetter: true}
	end := chart{Title: "slow consumers: server RSS at the end", Unit: "MB", LowerBetter: true}
	var data []slowResult
	for _, sv := range s.slowServers() {
		for _, r := range runs[sv.Name] {
			data = append(data, r)
			if r.Error != "" {
				t.failed(sv.Name, r.Error)
				continue
			}
			verdict := "yes"
			if !r.Plateau {
				verdict = "NO"
			}
			if r.Capped {
				verdict = fmt.Sprintf("NO (passed %d MB at %.1fs)", slowCapMB, r.Seconds[len(r.Seconds)-1])
			}
			t.Rows = append(t.Rows, []string{sv.Name, fmt.Sprintf("%.1f", r.StartMB), fmt.Sprintf("%.1f", r.EndMB), fmt.Sprintf("%.1f", r.MaxMB),
				fmt.Sprintf("%+.1f", r.GrowthMBps), verdict, fmt.Sprintf("%.1f", r.ReadMBps)})
			rss.Series = append(rss.Series, series{Label: sv.Name, X: r.Seconds, Y: r.RSSMB})
			end.Bars = append(end.Bars, bar{Label: sv.Name, Value: r.EndMB})
		}
	}
	res.Tables, res.Charts, res.Data = []table{t}, []chart{rss, end}, data
	return res
}

func (s *suite) slowOne(ctx context.Context, name string, d time.Duration) (res slowResult) {
	res.Server = name
	ch, err := startChild(ctx, s.cfg, name, "")
	if err != nil {
		res.Error = "start: " + err.Error()
		return res
	}
	defer ch.kill()
	pid := ch.cmd.Process.Pid
	st, err := startStream(ctx, ch.hello.Addr, s.slowConns, slowChunk, slowRate)
	if err != nil {
		res.Error = ch.failure(err).Error()
		return res
	}
	defer st.close()
	t0 := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	r0, each0 := st.read(), st.each.snapshot()
	for {
		kb, err := procRSSKB(pid)
		if err != nil {
			res.Error = ch.failure(err).Error()
			return res
		}
		el := time.Since(t0).Seconds()
		mb := float64(kb) / 1024
		res.Seconds, res.RSSMB = append(res.Seconds, el), append(res.RSSMB, mb)
		if mb > slowCapMB {
			res.Capped = true
			break
		}
		if el >= d.Seconds() {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return res
		}
	}
	res.ReadMBps = float64(st.read()-r0) / 1e6 / time.Since(t0).Seconds()
	stalled := st.each.stalled(each0)
	if err := st.Err(); err != nil {
		res.Error = ch.failure(err).Error()
		return res
	}
	if stalled > 0 && !res.Capped {
		res.Error = ch.failure(fmt.Errorf("%d of %d slow consumers read nothing in %v: the server stalled them", stalled, s.slowConns, d)).Error()
		return res
	}
	n := len(res.RSSMB)
	res.StartMB, res.EndMB, res.MaxMB = res.RSSMB[0], res.RSSMB[n-1], slices.Max(res.RSSMB)
	half := n / 2
	if n-half >= 2 {
		dt := res.Seconds[n-1] - res.Seconds[half]
		res.GrowthMBps = (res.RSSMB[n-1] - res.RSSMB[half]) / dt
	}
	res.Plateau = !res.Capped && res.EndMB <= res.RSSMB[half]*1.1+2
	st.close()
	ch.stop()
	return res
}
