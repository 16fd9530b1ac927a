//go:build unix

package main

// The relay scenario (opt-in: -scenarios relay): a TCP proxy child in
// front of an echo upstream, bulk streams through it. It measures the
// proxy, not the echo: its CPU and system calls per MB against its
// throughput, for plugloop's core relay (core.Conn.RelayTo) on several
// backends, a plugloop proxy that moves every byte through RAW_RX and
// Write, and the standard library's goroutine pair of io.Copy.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/echo"
)

const (
	// proxyPrefix names a relay-scenario proxy child: proxyPrefix+kind
	// (see startProxy).
	proxyPrefix = "proxy:"
	// relayChunk is the load's write size: bulk.
	relayChunk = 64 << 10
	// Callback proxy: what may wait for one side before the other's rx
	// pauses, and below which it resumes (examples/proxy's defaults),
	// and the most one RAW_RX brings.
	proxyHighWater = 256 << 10
	proxyLowWater  = 64 << 10
	proxyRxChunk   = 64 << 10
)

// defaultRelayProxies are the proxies the scenario measures unless
// -relay-proxies says otherwise: the core's relay on each readiness backend
// and on netpoll's adapter (which copies), the callback proxy on epoll and
// netpoll (to tell the relay's cost from the backend's), and io.Copy.
var defaultRelayProxies = []string{"relayto/epoll", "relayto/poll", "relayto/gnet", "relayto/netpoll", "callback/epoll", "callback/netpoll", "stdlib"}

func runRelay(ctx context.Context, s *suite) *scenarioResult {
	res := &scenarioResult{
		Measures: fmt.Sprintf("A proxy child (GOMAXPROCS=1, pinned like the servers) in front of a plugloop epoll echo server that runs in the bench process, "+
			"with the load; %d connections through the proxy, each with a writer pushing %d KiB writes as fast as they are taken and a reader "+
			"consuming the echo, so every byte crosses the proxy twice. MB/s = 10^6 bytes echoed back per second; proxy CPU µs per MB echoed "+
			"(getrusage of the proxy child); syscalls/MB and splices/MB: plugloop's Stats (perf syscalls/MB with -perf, for every proxy). "+
			"relayto/B: core.Conn.RelayTo both ways on backend B (splice(2) through a pipe where the core reads its sockets, a copy on netpoll); "+
			"callback/epoll: every byte through RAW_RX and one Write per RAW_WRITEABLE, rx paused past %d KiB waiting (examples/proxy -no-relay); "+
			"stdlib: a goroutine per direction, io.Copy between the two *net.TCPConn (splice(2) on Linux).",
			s.streamConns, relayChunk>>10, proxyHighWater>>10),
	}
	if s.cfg.target != "" {
		s.unreachable("relay: runs its own proxies and upstream, so not with -target")
		return nil
	}
	if need := fdsFor(4 * s.streamConns); need > s.cfg.fdLimit {
		s.unreachable("relay: %d connections need %d fds, the limit is %d", s.streamConns, need, s.cfg.fdLimit)
		return nil
	}
	up, upAddr, err := echoContext("epoll", echo.Protocol("echo"))
	if err != nil {
		s.unreachable("relay: the upstream echo server: %v", err)
		return nil
	}
	upDone := make(chan error, 1)
	go func() { upDone <- up.Run(context.Background()) }()
	defer func() {
		up.Destroy()
		<-upDone
	}()
	var servers []serverInfo
	for _, p := range s.relayProxies {
		servers = append(servers, serverInfo{Name: p})
	}
	env := []string{childUpstreamEnv + "=" + upAddr}
	runs := eachServer(ctx, servers, s.repeats(), func(sv serverInfo, _ int) streamResult {
		ch, err := spawnEnv(ctx, s.cfg, proxyPrefix+sv.Name, "", env)
		if err != nil {
			return streamResult{Server: sv.Name, Error: "start: " + err.Error()}
		}
		return s.measureStream(ctx, ch, sv.Name, s.streamConns, relayChunk)
	}, func(r streamResult) string {
		if r.Error != "" {
			return "error: " + r.Error
		}
		return fmt.Sprintf("%7.1f MB/s  %7.0f µs CPU/MB  %6.1f syscalls/MB  others %.0f%% CPU", r.MBPerSec, r.CPUUSPerMB, r.SyscallsPerMB, r.OtherCPU)
	})
	t := table{Header: []string{"proxy", "MB/s echoed", "proxy CPU µs/MB", "proxy CPU %", "syscalls/MB", "splices/MB", "relayed/echoed", "peak RSS MB", "others %CPU"}}
	if s.cfg.perfPath != "" {
		t.Header = append(t.Header, "perf syscalls/MB")
	}
	mbs := chart{Title: fmt.Sprintf("proxy throughput, %d conns × %d KiB writes, echoed through the proxy", s.streamConns, relayChunk>>10), Unit: "MB/s"}
	cpu := chart{Title: "proxy CPU per MB echoed", Unit: "µs/MB", LowerBetter: true}
	var data []streamResult
	for _, sv := range servers {
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
			dash(m.SyscallsPerMB, "%.1f"), dash(m.SplicesPerMB, "%.1f"), dash(m.RelayedPerMB/1e6, "%.2f"), fmt.Sprintf("%.1f", m.PeakRSSMB), fmt.Sprintf("%.0f", m.OtherCPU)}
		if s.cfg.perfPath != "" {
			row = append(row, dash(m.PerfSyscallsPerMB, "%.1f"))
		}
		t.Rows = append(t.Rows, row)
		mbs.Bars = append(mbs.Bars, bar{Label: sv.Name, Value: m.MBPerSec})
		cpu.Bars = append(cpu.Bars, bar{Label: sv.Name, Value: m.CPUUSPerMB})
	}
	t.Notes = append(t.Notes, "relayed/echoed: bytes the core's relays moved per byte echoed (2 when both directions relay: every byte crosses the proxy twice); "+
		"syscalls/MB for the stdlib proxy needs -perf (it keeps no counters)")
	res.Tables = []table{t}
	res.Charts = []chart{mbs, cpu}
	res.Data = data
	return res
}

// startProxy starts the relay scenario's proxy of the given kind (see
// defaultRelayProxies: relayto/BACKEND, callback/BACKEND or stdlib) on
// 127.0.0.1:0, in front of upstream.
func startProxy(kind, upstream string) (string, func() core.Stats, error) {
	if upstream == "" {
		return "", nil, errors.New("no upstream (" + childUpstreamEnv + ")")
	}
	if kind == "stdlib" {
		addr, err := startStdlibProxy(upstream)
		return addr, nil, err
	}
	how, backend, ok := strings.Cut(kind, "/")
	if !ok || how != "relayto" && how != "callback" {
		return "", nil, fmt.Errorf("unknown proxy %q", kind)
	}
	p := &benchProxy{upstream: upstream, relay: how == "relayto"}
	ctx, addr, err := echoContext(backend, core.Protocol{Name: "proxy", Callback: p.callback, AllowHalfOpen: true, RxChunk: proxyRxChunk})
	if err != nil {
		return "", nil, err
	}
	p.ctx = ctx
	go func() {
		if err := ctx.Run(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "plugloop: Run:", err)
			os.Exit(1)
		}
	}()
	return addr, ctx.Stats, nil
}

// benchProxy is a plugloop TCP proxy: each accepted connection gets a
// connection of its own to the upstream, on the same thread, and the
// bytes go both ways, by the core's relay (relay) or through RAW_RX and
// Write. Half-closes pass on; an error resets the partner. A client is
// paused until its upstream is established, so nothing it sends waits in
// the proxy meanwhile.
type benchProxy struct {
	ctx      *core.Context
	upstream string
	relay    bool
}

// proxySide is one connection of a pair.
type proxySide struct {
	conn       *core.Conn
	other      *proxySide
	connecting bool   // an upstream not established yet
	out        []byte // callback proxy: received from other, not written yet
	paused     bool   // rx paused: until the upstream is there, or other's out is full
	endOut     bool   // other's input ended: CloseWrite once out is written
	closed     bool
}

// waiting is what s has to send: what the proxy holds for it and what the
// core holds of its last Write.
func (s *proxySide) waiting() int { return len(s.out) + s.conn.Buffered() }

func (p *benchProxy) callback(ev core.Event) error {
	c := ev.Conn
	switch ev.Reason {
	case core.ReasonRawAdopt:
		if s, ok := c.User().(*proxySide); ok {
			s.connecting = false
			return p.established(s)
		}
		cl := &proxySide{conn: c, paused: true}
		up := &proxySide{other: cl, connecting: true}
		cl.other = up
		c.SetUser(cl)
		if err := c.RxFlowControl(false); err != nil {
			return err
		}
		conn, err := p.ctx.Connect("tcp", p.upstream, "proxy", core.WithUser(up), core.OnThread(ev.Thread.Index()))
		if err != nil {
			return err
		}
		up.conn = conn
	case core.ReasonRawRX:
		return p.rx(c.User().(*proxySide), ev.Data)
	case core.ReasonRawWriteable:
		return p.writeable(c.User().(*proxySide))
	case core.ReasonRawRxEnd:
		// Every byte came (relayed or in RAW_RX): the end follows them.
		o := c.User().(*proxySide).other
		switch {
		case o.closed:
		case len(o.out) > 0:
			o.endOut = true
		default:
			return closeWrite(o)
		}
	case core.ReasonClientConnectionError:
		s := c.User().(*proxySide)
		s.closed = true
		if !s.other.closed {
			return s.other.conn.Close()
		}
	case core.ReasonRawClose:
		s := c.User().(*proxySide)
		s.closed = true
		if o := s.other; !o.closed {
			if ev.Err != nil && !errors.Is(ev.Err, io.EOF) {
				_ = o.conn.Abort() // a broken stream must not pass for a whole one
			} else {
				_ = o.conn.Close()
			}
		}
	}
	return nil
}

// established starts a pair whose upstream s is connected: the core's
// relays both ways, or the callback path, and the client's rx.
func (p *benchProxy) established(up *proxySide) error {
	cl := up.other
	if cl.closed {
		return up.conn.Close()
	}
	if p.relay {
		if err := up.conn.RelayTo(cl.conn); err != nil {
			return err
		}
		// A client whose input ended while its upstream connected
		// relays too: what it kept goes first.
		if err := cl.conn.RelayTo(up.conn); err != nil {
			return err
		}
	}
	cl.paused = false
	return cl.conn.RxFlowControl(true)
}

// rx passes what s received on to its partner (callback proxy), pausing
// s once the partner has high water waiting.
func (p *benchProxy) rx(s *proxySide, data []byte) error {
	o := s.other
	if o.closed {
		return nil
	}
	o.out = append(o.out, data...)
	if err := o.conn.CallbackOnWritable(); err != nil {
		return err
	}
	if o.waiting() >= proxyHighWater && !s.paused {
		s.paused = true
		return s.conn.RxFlowControl(false)
	}
	return nil
}

// writeable writes what waits for s in one Write (the core keeps what the
// kernel does not take), and resumes the partner below low water.
func (p *benchProxy) writeable(s *proxySide) error {
	if len(s.out) > 0 {
		if _, err := s.conn.Write(s.out); err != nil {
			return err
		}
		s.out = s.out[:0]
	}
	if s.endOut {
		s.endOut = false
		return closeWrite(s)
	}
	if o := s.other; o.paused && !o.closed && !s.connecting {
		if s.waiting() >= proxyLowWater {
			return s.conn.CallbackOnWritable()
		}
		o.paused = false
		return o.conn.RxFlowControl(true)
	}
	return nil
}

// closeWrite passes a peer's end of stream on to s.
func closeWrite(s *proxySide) error {
	if err := s.conn.CloseWrite(); err != nil && !errors.Is(err, core.ErrClosed) && !errors.Is(err, core.ErrWriteClosed) {
		return err
	}
	return nil
}

// startStdlibProxy is the standard library's proxy: a goroutine per
// direction, io.Copy between the two *net.TCPConn (which splices on
// Linux), the end of stream passed on with CloseWrite.
func startStdlibProxy(upstream string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, "accept:", err)
				os.Exit(1)
			}
			go stdlibPair(c.(*net.TCPConn), upstream)
		}
	}()
	return ln.Addr().String(), nil
}

func stdlibPair(cl *net.TCPConn, upstream string) {
	defer cl.Close()
	c, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	up := c.(*net.TCPConn)
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(cl, up); err == nil {
			cl.CloseWrite()
		}
	}()
	if _, err := io.Copy(up, cl); err == nil {
		up.CloseWrite()
	} else {
		// A broken stream: reset both ways rather than pass it on whole.
		cl.SetLinger(0)
		up.SetLinger(0)
		cl.Close()
		up.Close()
	}
	<-done
}
