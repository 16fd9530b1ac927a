//go:build unix

package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// hang bounds every wait, so that a bug fails the test instead of hanging
// it; nothing waits for time to pass.
const hang = 20 * time.Second

// The tests' flow-control marks: small, so that little data exercises them.
const (
	testHigh = 64 << 10
	testLow  = 16 << 10
)

func TestProxy(t *testing.T) {
	// What stays for good once used — the Go runtime's poller, netpoll's
	// pollers — comes before the baselines: one round trip on each backend.
	libs := testkit.Backends(t)
	t.Run("warmup", func(t *testing.T) {
		up := serve(t, nil, echo)
		for _, lib := range libs {
			p := proxyFor(t, lib, up)
			c := dial(t, p.addr(), nil)
			write(t, c, []byte("hello"))
			got := make([]byte, 5)
			_, err := io.ReadFull(c, got)
			require.NoError(t, err)
			require.Equal(t, "hello", string(got))
		}
	})
	for _, lib := range libs {
		t.Run(lib, func(t *testing.T) {
			noLeaks := testkit.Baseline(t, hang)
			t.Run("Relay", func(t *testing.T) { testRelay(t, config{evlib: lib, threads: 1}) })
			t.Run("RelayRawRX", func(t *testing.T) { testRelay(t, config{evlib: lib, threads: 1, noRelay: true}) })
			if lib != "foreign" { // whose loop here drives one thread
				// Pairs spread over threads, each pair on one.
				t.Run("RelayThreads", func(t *testing.T) { testRelay(t, config{evlib: lib, threads: 2}) })
			}
			t.Run("Backpressure", func(t *testing.T) { testBackpressure(t, lib) })
			t.Run("BackpressureCoreRelay", func(t *testing.T) { testBackpressureCoreRelay(t, lib) })
			t.Run("HeldWhileConnecting", func(t *testing.T) { testHeldWhileConnecting(t, lib) })
			t.Run("EndWhileConnecting", func(t *testing.T) { testEndWhileConnecting(t, lib) })
			t.Run("ClientHalfClose", func(t *testing.T) { testClientHalfClose(t, lib) })
			t.Run("UpstreamHalfClose", func(t *testing.T) { testUpstreamHalfClose(t, lib) })
			t.Run("Refused", func(t *testing.T) { testRefused(t, lib) })
			t.Run("UpstreamReset", func(t *testing.T) { testUpstreamReset(t, lib) })
			t.Run("ClientReset", func(t *testing.T) { testClientReset(t, lib) })
			t.Run("Idle", func(t *testing.T) { testIdle(t, lib) })

			noLeaks()
		})
	}
}

// Several clients at once stream MiBs of random bytes through the proxy to
// an echo upstream and read the echo concurrently: both directions of every
// pair carry data at the same time, and every byte comes back. Each client
// ends with a half-close, which the echo passes back: it gets the echo,
// then end of stream, and both sides of every pair close.
func testRelay(t *testing.T, cfg config) {
	const clients, size = 4, 2 << 20
	cfg.upstream = serve(t, nil, echo)
	p := proxyWith(t, cfg)
	errs := make(chan error, clients)
	for i := range clients {
		data := random(size, uint64(i))
		c := dial(t, p.addr(), nil)
		go func() {
			werr := make(chan error, 1)
			go func() {
				_, err := c.Write(data)
				werr <- errors.Join(err, c.CloseWrite())
			}()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, data) {
				err = fmt.Errorf("client %d: the echo differs (%d bytes of %d)", i, len(got), len(data))
			}
			errs <- errors.Join(err, <-werr)
		}()
	}
	for range clients {
		require.NoError(t, <-errs)
	}
	waitFor(t, "every pair closed", func() bool { return p.stats().Open == 0 })
	s := p.stats()
	require.EqualValues(t, clients, s.Accepted)
	require.EqualValues(t, 2*clients, s.HalfCloses, "each end of stream passed on")
	require.Zero(t, s.Aborted)
	if cfg.noRelay {
		require.Zero(t, s.Relays)
	} else {
		// Every upstream's answer; a client's input too unless it ended
		// while its upstream connected (the proxy paused it at high
		// water, and its FIN came meanwhile: that stays on RAW_RX).
		require.GreaterOrEqual(t, s.Relays, uint64(clients), "directions relayed by the core")
		require.LessOrEqual(t, s.Relays, uint64(2*clients), "directions relayed by the core")
	}
	require.LessOrEqual(t, s.PeakPending[fromClient], int64(testHigh+rxChunk))
	require.LessOrEqual(t, s.PeakPending[fromUpstream], int64(testHigh+rxChunk))
}

// A client writes without reading to an upstream that does not read
// either. The proxy holds at most high water plus one read for the
// upstream and pauses the client; then the upstream echoes (without the
// client reading) and the proxy pauses the upstream in turn. Once the
// client reads, every byte it sent comes back. The bound is checked with
// the proxy's own counters of what it held.
func testBackpressure(t *testing.T, lib string) {
	gate := make(chan struct{})
	var gateOnce sync.Once
	open := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(open)
	up := serve(t, smallBuffers, func(c net.Conn) {
		<-gate
		echo(c)
	})
	p := proxyWith(t, config{evlib: lib, upstream: up, noRelay: true})
	c := dial(t, p.addr(), smallBuffers)

	block := random(1<<20, 7)
	const piece = 16 << 10
	var stop atomic.Bool
	total := make(chan int64, 1)
	go func() { // the writer: until both directions were paused
		var n int64
		for !stop.Load() {
			off := n % int64(len(block))
			m, err := c.Write(block[off : off+piece])
			n += int64(m)
			if err != nil {
				break
			}
		}
		c.CloseWrite()
		total <- n
	}()
	waitFor(t, "the proxy to pause the client", func() bool { return p.stats().Pauses[fromClient] > 0 })
	open()
	waitFor(t, "the proxy to pause the upstream", func() bool { return p.stats().Pauses[fromUpstream] > 0 })
	stop.Store(true) // the writer's blocked write ends as the reading below goes on

	// Read the echo until its end, which the client's half-close brings.
	got := readPattern(t, c, block)
	sent := <-total
	require.Equal(t, sent, got)

	s := p.stats()
	t.Logf("%d bytes each way; peak pending %d to the upstream, %d to the client; %d+%d pauses",
		sent, s.PeakPending[fromClient], s.PeakPending[fromUpstream], s.Pauses[fromClient], s.Pauses[fromUpstream])
	for dir := range 2 {
		require.GreaterOrEqual(t, s.PeakPending[dir], int64(testHigh), "direction %d reached high water", dir)
		require.LessOrEqual(t, s.PeakPending[dir], int64(testHigh+rxChunk), "direction %d held more than high water and one read", dir)
	}
	require.Zero(t, s.RxWhilePaused)
}

// The same through the core's relay: a client writes without reading to
// an upstream that does not read either, and ends up blocked, the relays
// holding at most a pipe's worth each way; once the upstream echoes and
// the client reads, every byte comes back in order.
func testBackpressureCoreRelay(t *testing.T, lib string) {
	gate := make(chan struct{})
	var gateOnce sync.Once
	open := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(open)
	up := serve(t, smallBuffers, func(c net.Conn) {
		<-gate
		echo(c)
	})
	p := proxyFor(t, lib, up)
	c := dial(t, p.addr(), smallBuffers)
	waitFor(t, "both directions relayed", func() bool { return p.stats().Relays == 2 })

	block := random(1<<20, 8)
	const total = 64 << 20 // far beyond every buffer on the way
	var written atomic.Int64
	werr := make(chan error, 1)
	go func() {
		var n int64
		for n < total {
			off := n % int64(len(block))
			m, err := c.Write(block[off : off+16<<10])
			n += int64(m)
			written.Store(n)
			if err != nil {
				werr <- err
				return
			}
		}
		werr <- c.CloseWrite()
	}()
	// Blocked: no progress over a few looks (a slow machine only makes
	// this wait longer; a relay that does not push back lets the writer
	// finish, which the check below catches).
	for last, still := int64(-1), 0; still < 3; {
		time.Sleep(20 * time.Millisecond)
		n := written.Load()
		if n == last {
			still++
		} else {
			last, still = n, 0
		}
		require.Less(t, n, int64(total), "the client wrote everything to an upstream that reads nothing")
	}
	t.Logf("client blocked after %d bytes", written.Load())
	open()
	got := readPattern(t, c, block)
	require.NoError(t, <-werr)
	require.EqualValues(t, total, got)
	require.Zero(t, p.stats().Pauses[fromClient], "the core's relay, not the proxy, pushed back")
}

// Input a client sends before the upstream connection is established is
// held, under the same bound: the proxy pauses the client at high water and
// sends everything once connected. The upstream listener's accept queue is
// full (backlog 0, one connection waiting), so the kernel drops the proxy's
// SYN until the test makes room.
func testHeldWhileConnecting(t *testing.T, lib string) {
	ln := backlogZero(t)
	filler, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer filler.Close()

	p := proxyFor(t, lib, ln.Addr().String())
	// A client that leaves (a reset: its mere end of stream would be passed
	// on once connected) while its upstream connects aborts the connect.
	gone := dial(t, p.addr(), nil)
	waitFor(t, "the upstream connecting", func() bool { return p.stats().Connecting == 1 })
	reset(gone)
	waitFor(t, "both sides gone", func() bool { return p.stats().Open == 0 })
	require.Zero(t, p.stats().ConnectErrors, "an aborted connect is not an upstream's error")

	c := dial(t, p.addr(), nil)
	data := random(1<<20, 3)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	waitFor(t, "the proxy to pause the client", func() bool { return p.stats().Pauses[fromClient] > 0 })
	s := p.stats()
	require.EqualValues(t, 1, s.Connecting, "the upstream is not established")
	require.GreaterOrEqual(t, s.PeakPending[fromClient], int64(testHigh))
	require.LessOrEqual(t, s.PeakPending[fromClient], int64(testHigh+rxChunk))

	// Room in the accept queue: the proxy's next SYN gets through.
	f, err := ln.Accept()
	require.NoError(t, err)
	f.Close()
	serveOn(t, ln, echo)
	got := make([]byte, len(data))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "the echo differs")
	require.NoError(t, <-werr)
	require.Zero(t, p.stats().Connecting)
}

// A client that sends a little and half-closes before its upstream is
// connected has both passed on once it is: the upstream (an echo) gets the
// bytes, then the end, and the client its echo, then the end.
func testEndWhileConnecting(t *testing.T, lib string) {
	ln := backlogZero(t)
	filler, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer filler.Close()

	p := proxyFor(t, lib, ln.Addr().String())
	c := dial(t, p.addr(), nil)
	data := random(1<<10, 4)
	write(t, c, data)
	require.NoError(t, c.CloseWrite())
	waitFor(t, "the proxy to hold the input", func() bool { return p.stats().PeakPending[fromClient] == int64(len(data)) })
	require.EqualValues(t, 1, p.stats().Connecting, "the upstream is not established")

	f, err := ln.Accept()
	require.NoError(t, err)
	f.Close()
	serveOn(t, ln, echo)
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "the echo differs")
	waitFor(t, "both sides closed", func() bool { return p.stats().Open == 0 })
	require.EqualValues(t, 2, p.stats().HalfCloses)
}

// A client sends a request and shuts its write side down (as "nc -N"
// does); the upstream reads the request until its end, then answers at
// length and closes. The client gets all of the answer, then end of stream.
func testClientHalfClose(t *testing.T, lib string) {
	request, answer := random(64<<10, 10), random(4<<20, 11)
	p := proxyFor(t, lib, serve(t, nil, func(c net.Conn) {
		defer c.Close()
		h := sha256.New()
		if _, err := copyPlain(h, c); err != nil {
			return
		}
		c.Write(h.Sum(nil))
		c.Write(answer)
	}))
	c := dial(t, p.addr(), smallBuffers) // the answer backs up on the way
	write(t, c, request)
	require.NoError(t, c.CloseWrite())
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	sum := sha256.Sum256(request)
	require.Equal(t, len(sum)+len(answer), len(got))
	require.Equal(t, sum[:], got[:len(sum)], "the upstream got the whole request")
	require.True(t, bytes.Equal(answer, got[len(sum):]), "the answer differs")
	waitFor(t, "both sides closed", func() bool { return p.stats().Open == 0 })
	require.EqualValues(t, 2, p.stats().HalfCloses)
}

// The upstream sends a greeting and shuts its write side down first; the
// client reads the greeting to its end and only then sends its data, which
// the upstream gets whole, then end of stream once the client half-closes.
func testUpstreamHalfClose(t *testing.T, lib string) {
	greeting, data := random(1<<20, 12), random(4<<20, 13)
	got := make(chan []byte, 1)
	p := proxyFor(t, lib, serve(t, nil, func(c net.Conn) {
		defer c.Close()
		c.Write(greeting)
		c.(*net.TCPConn).CloseWrite()
		h := sha256.New()
		if _, err := copyPlain(h, c); err == nil {
			got <- h.Sum(nil)
		}
	}))
	c := dial(t, p.addr(), nil)
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	require.True(t, bytes.Equal(greeting, b), "the greeting differs")
	write(t, c, data) // the other direction relays on
	require.NoError(t, c.CloseWrite())
	sum := sha256.Sum256(data)
	require.Equal(t, sum[:], <-got, "the upstream got every byte")
	waitFor(t, "both sides closed", func() bool { return p.stats().Open == 0 })
	require.EqualValues(t, 2, p.stats().HalfCloses)
}

// An upstream that refuses the connection closes the client, which sees its
// end of stream (or a reset, if its input was unread).
func testRefused(t *testing.T, lib string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	ln.Close()
	p := proxyFor(t, lib, closed)

	quiet := dial(t, p.addr(), nil)
	b, err := io.ReadAll(quiet)
	require.NoError(t, err, "a client that sent nothing gets end of stream")
	require.Empty(t, b)

	talker := dial(t, p.addr(), nil)
	write(t, talker, []byte("hello"))
	b, err = io.ReadAll(talker)
	if err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}
	require.Empty(t, b)
	require.EqualValues(t, 2, p.stats().ConnectErrors)
	waitFor(t, "both clients closed", func() bool { return p.stats().Open == 0 })
}

// An upstream that resets the connection mid-stream gets the client's
// connection reset too.
func testUpstreamReset(t *testing.T, lib string) {
	p := proxyFor(t, lib, serve(t, nil, func(c net.Conn) {
		buf := make([]byte, 16<<10)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write([]byte("partial answer"))
		reset(c)
	}))
	c := dial(t, p.addr(), nil)
	// Written before the reset, and read on this goroutine only: a write
	// that met the reset would take the error the read checks.
	write(t, c, random(16<<10, 1))
	_, err := io.Copy(io.Discard, c)
	require.ErrorIs(t, err, syscall.ECONNRESET)
	waitFor(t, "both sides closed", func() bool { return p.stats().Open == 0 })
	require.EqualValues(t, 1, p.stats().Aborted)
}

// A client that resets its connection gets the upstream's reset too.
func testClientReset(t *testing.T, lib string) {
	upErr := make(chan error, 1)
	p := proxyFor(t, lib, serve(t, nil, func(c net.Conn) {
		_, err := io.Copy(io.Discard, c)
		upErr <- err
	}))
	c := dial(t, p.addr(), nil)
	write(t, c, random(16<<10, 2))
	waitFor(t, "the upstream connected", func() bool { return p.stats().Open == 2 && p.stats().Connecting == 0 })
	reset(c)
	require.ErrorIs(t, <-upErr, syscall.ECONNRESET)
	waitFor(t, "both sides closed", func() bool { return p.stats().Open == 0 })
	require.EqualValues(t, 1, p.stats().Aborted)
}

// stdlibProxy is the baseline the benchmarks compare with: the proxy
// people write with Go's net package, two goroutines per pair copying with
// io.Copy (which splices between TCP sockets on Linux), CloseWrite at one
// direction's end, both closed once both directions ended or one failed.
// It serves ln until ln is closed, and returns once every pair is done.
func stdlibProxy(ln net.Listener, upstream string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			var once sync.Once
			abort := func() {
				once.Do(func() {
					c.(*net.TCPConn).SetLinger(0)
					u.(*net.TCPConn).SetLinger(0)
					c.Close()
					u.Close()
				})
			}
			pipe := func(dst, src *net.TCPConn) {
				if _, err := io.Copy(dst, src); err != nil {
					abort()
					return
				}
				dst.CloseWrite()
			}
			done := make(chan struct{})
			go func() {
				pipe(u.(*net.TCPConn), c.(*net.TCPConn))
				close(done)
			}()
			pipe(c.(*net.TCPConn), u.(*net.TCPConn))
			<-done
		}()
	}
}

// TestStdlibProxyServe runs the baseline as a program, for measurements
// with separate processes (wrk, the bench's -target):
//
//	go test -c -o /tmp/proxy.test ./examples/proxy
//	PROXY_STDLIB=127.0.0.1:8081,127.0.0.1:9000 /tmp/proxy.test -test.run StdlibProxyServe -test.timeout 0
//
// serves until killed. Without PROXY_STDLIB it is skipped.
func TestStdlibProxyServe(t *testing.T) {
	listen, upstream, ok := strings.Cut(os.Getenv("PROXY_STDLIB"), ",")
	if !ok {
		t.Skip("set PROXY_STDLIB=LISTEN,UPSTREAM to run the stdlib proxy")
	}
	ln, err := net.Listen("tcp", listen)
	require.NoError(t, err)
	stdlibProxy(ln, upstream)
}

// BenchmarkStream streams through each proxy to an echo upstream, in the
// same process: conns connections each write their share of b.N MiB and
// read the echo concurrently. MB/s counts one direction. cpu-ms/MiB is the
// whole process' CPU time (getrusage) per MiB — load generator, upstream
// and proxy together; the load and the upstream are the same code for
// every proxy, so the differences are the proxies'.
func BenchmarkStream(b *testing.B) {
	const conns, mib = 8, 1 << 20
	up := serve(b, nil, echo)
	var names []string
	for _, d := range evlib.Backends() {
		if d.Available() {
			names = append(names, d.Name)
		}
	}
	names = append(names, "stdlib")
	block := random(mib, 9)
	for _, name := range names {
		b.Run(name, func(b *testing.B) {
			var addr string
			if name == "stdlib" {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(b, err)
				done := make(chan struct{})
				go func() {
					stdlibProxy(ln, up)
					close(done)
				}()
				defer func() {
					ln.Close()
					<-done
				}()
				addr = ln.Addr().String()
			} else {
				p, err := start(config{evlib: name, listen: "127.0.0.1:0", upstream: up, highWater: 256 << 10, lowWater: 64 << 10, connectTimeout: hang})
				require.NoError(b, err)
				defer p.close()
				addr = p.addr()
			}
			cs := make([]net.Conn, conns)
			for i := range cs {
				c, err := net.Dial("tcp", addr)
				require.NoError(b, err)
				defer c.Close()
				cs[i] = c
			}
			b.SetBytes(mib)
			var ru0, ru1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			b.ResetTimer()
			errs := make(chan error, 2*conns)
			for i, c := range cs {
				n := b.N / conns
				if i < b.N%conns {
					n++
				}
				go func() {
					for range n {
						if _, err := c.Write(block); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
				go func() {
					_, err := io.CopyN(io.Discard, c, int64(n)*mib)
					errs <- err
				}()
			}
			for range 2 * conns {
				require.NoError(b, <-errs)
			}
			b.StopTimer()
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
			b.ReportMetric(float64(cpu.Microseconds())/1e3/float64(b.N), "cpu-ms/MiB")
		})
	}
}

// A pair that stays silent is closed by the idle timeout, which resets the
// side that did not time out (or which timed out at the same moment).
func testIdle(t *testing.T, lib string) {
	upErr := make(chan error, 1)
	up := serve(t, nil, func(c net.Conn) {
		_, err := io.Copy(io.Discard, c)
		upErr <- err
	})
	p, err := start(config{evlib: lib, listen: "127.0.0.1:0", upstream: up, highWater: testHigh, lowWater: testLow, connectTimeout: hang, idle: 20 * time.Millisecond})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.close()) }()
	c := dial(t, p.addr(), nil)
	write(t, c, []byte("hello"))
	_, err = io.ReadAll(c)
	if err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}
	if err := <-upErr; err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}
	waitFor(t, "both sides closed", func() bool { return p.stats().Open == 0 })
}

// proxyFor starts a proxy to upstream on lib with the tests' marks, and
// closes it when the test ends; threads, if given, is its service threads.
func proxyFor(t *testing.T, lib, upstream string, threads ...int) *proxy {
	t.Helper()
	return proxyWith(t, config{evlib: lib, upstream: upstream, threads: append(threads, 1)[0]})
}

// proxyWith is proxyFor with more of the configuration: cfg's evlib,
// upstream, threads and noRelay; the rest is the tests'.
func proxyWith(t *testing.T, cfg config) *proxy {
	t.Helper()
	lib := cfg.evlib
	cfg.listen, cfg.highWater, cfg.lowWater, cfg.connectTimeout = "127.0.0.1:0", testHigh, testLow, hang
	p, err := start(cfg)
	require.NoError(t, err)
	require.Equal(t, lib, p.ctx.EventLib())
	t.Cleanup(func() {
		require.Zero(t, p.stats().RxWhilePaused, "RAW_RX after the proxy paused rx")
		require.NoError(t, p.close())
	})
	return p
}

// echo sends back what it reads until end of stream, then closes.
func echo(c net.Conn) {
	copyPlain(c, c)
	c.Close()
}

// copyPlain is io.Copy through a buffer: between two TCP connections
// io.Copy splices through pipes the runtime keeps in a pool, which the
// descriptor check would take for a leak.
func copyPlain(dst io.Writer, src io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 32<<10))
}

// serve runs handler for every connection to a new loopback listener,
// whose sockets control sets up if given; it returns the address. When the
// test ends the listener and every connection are closed, and the handlers
// waited for.
func serve(t testing.TB, control func(string, string, syscall.RawConn) error, handler func(net.Conn)) string {
	t.Helper()
	lc := net.ListenConfig{Control: control}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveOn(t, ln, handler)
	return ln.Addr().String()
}

func serveOn(t testing.TB, ln net.Listener, handler func(net.Conn)) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handler(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// backlogZero listens on loopback with a backlog of 0: one connection fits
// in the accept queue, the SYNs of the next are dropped until it is
// accepted.
func backlogZero(t *testing.T) net.Listener {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	unix.CloseOnExec(fd) // not SOCK_CLOEXEC, which macOS lacks
	f := os.NewFile(uintptr(fd), "backlog0")
	defer f.Close()
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 0))
	ln, err := net.FileListener(f)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// smallBuffers gives a socket 16 KiB kernel buffers, so that back-pressure
// reaches the proxy after little data.
func smallBuffers(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = errors.Join(
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10),
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 16<<10))
	})
	return errors.Join(err, serr)
}

func dial(t *testing.T, addr string, control func(string, string, syscall.RawConn) error) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Control: control}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(hang)))
	return c.(*net.TCPConn)
}

func write(t *testing.T, c net.Conn, p []byte) {
	t.Helper()
	_, err := c.Write(p)
	require.NoError(t, err)
}

// reset closes c with a reset (SO_LINGER 0) instead of an end of stream.
func reset(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// random returns n bytes from a generator seeded with seed.
func random(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := i; j < min(i+8, n); j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
	return b
}

// waitFor waits for cond, bounded by hang; it asserts nothing about time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, hang, what, cond)
}

// readPattern reads c to its end, checking every byte against block
// repeated, and returns how many came.
func readPattern(t *testing.T, c net.Conn, block []byte) int64 {
	t.Helper()
	var got int64
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		for i := range n {
			if buf[i] != block[(got+int64(i))%int64(len(block))] {
				t.Fatalf("byte %d differs", got+int64(i))
			}
		}
		got += int64(n)
		if err == io.EOF {
			return got
		}
		require.NoError(t, err)
	}
}

// An upstream address Context.Connect would refuse for every client is
// refused at start, where the user sees why; a host name is not resolved
// there.
func TestBadUpstream(t *testing.T) {
	for _, up := range []string{"bogus", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:65536", "[::1]:-1"} {
		p, err := start(config{listen: "127.0.0.1:0", upstream: up, highWater: testHigh, lowWater: testLow})
		require.Error(t, err, up)
		require.ErrorContains(t, err, "upstream", up)
		require.Nil(t, p, up)
	}
	p, err := start(config{listen: "127.0.0.1:0", upstream: "nosuchhost.invalid:9000", highWater: testHigh, lowWater: testLow})
	require.NoError(t, err)
	require.NoError(t, p.close())
}
