//go:build unix

package main

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoFault is how echoServer misbehaves.
type echoFault int

const (
	echoRight   echoFault = iota
	echoCorrupt           // changes the echo past its first 5000 bytes
	echoStall             // the first connection's input is read and never echoed
)

// echoServer is a plain in-process echo server, with a fault if asked.
// With echoStall, stalled is closed once the stalled connection's first
// input was read.
func echoServer(t *testing.T, fault echoFault) (addr string, stalled <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	stallRead := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
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
			stalled := fault == echoStall && len(conns) == 1
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				var n int64
				for {
					k, err := c.Read(buf)
					if err != nil {
						return
					}
					if fault == echoCorrupt && n+int64(k) > 5000 {
						buf[k-1] ^= 0xff
					}
					if stalled && n == 0 {
						close(stallRead)
					}
					n += int64(k)
					if stalled {
						continue
					}
					if _, err := c.Write(buf[:k]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), stallRead
}

func requireUring(t *testing.T) {
	t.Helper()
	if _, err := uringProbe(); err != nil {
		t.Skipf("io_uring unavailable on this machine (a capability of the machine, not a failure): %v", err)
	}
}

// TestUringLoad runs the io_uring load generator against a plain echo
// server: small messages, and large ones that arrive in several pieces.
func TestUringLoad(t *testing.T) {
	requireUring(t)
	for _, tc := range []struct {
		conns, size, wait int
		want              uint64
	}{{conns: 8, size: 64, want: 400}, {conns: 8, size: 64, wait: 1, want: 400}, {conns: 3, size: 100_000, want: 60}} {
		addr, _ := echoServer(t, echoRight)
		l, err := startUringLoad(context.Background(), addr, tc.conns, tc.size, tc.wait)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for l.total() < tc.want && l.Err() == nil && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if stuck := l.close(); stuck != 0 {
			t.Fatalf("%d×%d B: %d connections stuck", tc.conns, tc.size, stuck)
		}
		if err := l.Err(); err != nil {
			t.Fatalf("%d×%d B: %v", tc.conns, tc.size, err)
		}
		if n := l.total(); n < tc.want {
			t.Fatalf("%d×%d B: %d round trips, want >= %d", tc.conns, tc.size, n, tc.want)
		}
		t.Logf("%d×%d B: %d round trips; %s", tc.conns, tc.size, l.total(), l.stats)
	}
}

// TestUringLoadDetectsCorruption: an echo that differs is an error.
func TestUringLoadDetectsCorruption(t *testing.T) {
	requireUring(t)
	addr, _ := echoServer(t, echoCorrupt)
	l, err := startUringLoad(context.Background(), addr, 2, 64, 0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for l.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	l.close()
	if err := l.Err(); err == nil || !strings.Contains(err.Error(), "different bytes") {
		t.Fatalf("error %v, want a mismatch", err)
	}
}

// TestUringLoadServerGone: a server that closes the connections is an
// error, not a hang.
func TestUringLoadServerGone(t *testing.T) {
	requireUring(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.CopyN(io.Discard, c, 1)
			c.Close()
		}
	}()
	l, err := startUringLoad(context.Background(), ln.Addr().String(), 2, 64, 0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for l.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	l.close()
	if l.Err() == nil {
		t.Fatal("no error after the server closed the connections")
	}
}

// eachLoader runs f as a subtest for either load generator, loading an
// in-process echo server with fault over conns connections; stalled is
// echoServer's.
func eachLoader(t *testing.T, conns int, fault echoFault, f func(t *testing.T, l loader, stalled <-chan struct{})) {
	for _, load := range []string{loadUring, loadNet} {
		t.Run(load, func(t *testing.T) {
			if load == loadUring {
				requireUring(t)
			}
			cfg := &config{load: load, conns: conns, size: 64}
			addr, stalled := echoServer(t, fault)
			l, err := startLoader(context.Background(), cfg, addr, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			f(t, l, stalled)
		})
	}
}

// TestLoadStalledConnection: a connection whose echo never comes is
// counted as stuck when the load stops, with either load generator, so
// that a server that stalls one shows as failing, not as slower.
func TestLoadStalledConnection(t *testing.T) {
	eachLoader(t, 3, echoStall, func(t *testing.T, l loader, stalled <-chan struct{}) {
		// The others go on: wait until they made some round trips, and
		// the stalled one sent its first message (a goroutine per
		// connection may not have by then).
		for l.total() < 100 && l.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		<-stalled
		if stuck := l.close(); stuck != 1 {
			t.Fatalf("%d connections stuck, want 1", stuck)
		}
	})
}

// TestLoadPauseResume: a paused load makes no round trips until resumed,
// with either load generator, and closes cleanly while paused; this is
// what lets a table's servers take turns slice by slice.
func TestLoadPauseResume(t *testing.T) {
	eachLoader(t, 4, echoRight, func(t *testing.T, l loader, _ <-chan struct{}) {
		progressed := func(from uint64) {
			t.Helper()
			for l.total() < from+100 {
				if err := l.Err(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Millisecond)
			}
		}
		for range 3 {
			progressed(l.total())
			if err := l.pause(); err != nil {
				t.Fatal(err)
			}
			n := l.total()
			time.Sleep(20 * time.Millisecond)
			if got := l.total(); got != n {
				t.Fatalf("%d round trips while paused", got-n)
			}
			l.resume()
		}
		progressed(l.total())
		if err := l.pause(); err != nil {
			t.Fatal(err)
		}
		if stuck := l.close(); stuck != 0 || l.Err() != nil {
			t.Fatalf("closed while paused: %d stuck, error %v", stuck, l.Err())
		}
	})
}

// TestLoadPauseStalled: pausing a load whose server stalls a connection
// fails, with either load generator: the stalled round trip never ends.
func TestLoadPauseStalled(t *testing.T) {
	eachLoader(t, 3, echoStall, func(t *testing.T, l loader, stalled <-chan struct{}) {
		<-stalled
		if err := l.pause(); err == nil || !strings.Contains(err.Error(), "stalled") {
			t.Fatalf("pause: %v, want the stalled connection's error", err)
		}
		if stuck := l.close(); stuck != 1 {
			t.Fatalf("%d connections stuck, want 1", stuck)
		}
	})
}
