//go:build unix

package core_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/plugloop/plugloop/internal/goid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Accepted connections spread over the least-loaded threads; each thread's
// callbacks all run on one goroutine of its own, and a connection is only
// ever serviced by its own thread.
func TestSMPPlacementAndExclusivity(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var mu sync.Mutex
			goroutines := map[int]map[uint64]bool{}
			owner := map[*core.Conn]int{}
			perThread := map[int]int{}
			proto := echo.Protocol("echo")
			inner := proto.Callback
			proto.Callback = func(ev core.Event) error {
				if ev.Thread != nil && ev.Conn != nil && ev.Reason <= core.ReasonRawClose { // not the setup's poll-fd callbacks
					mu.Lock()
					i := ev.Thread.Index()
					if goroutines[i] == nil {
						goroutines[i] = map[uint64]bool{}
					}
					goroutines[i][goid.ID()] = true
					if ev.Conn != nil {
						assert.Equal(t, i, ev.Conn.Thread().Index())
						if ev.Reason == core.ReasonRawAdopt {
							owner[ev.Conn] = i
							perThread[i]++
						}
						if o, ok := owner[ev.Conn]; ok {
							assert.Equal(t, o, i, "serviced by its own thread only")
						}
					}
					mu.Unlock()
				}
				return inner(ev)
			}
			ctx, err := core.New(core.Info{EventLib: lib, CountThreads: 3, Protocols: []core.Protocol{proto}})
			require.NoError(t, err)
			require.Equal(t, 3, ctx.CountThreads())
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()

			var conns []net.Conn
			for range 12 {
				c, err := net.Dial("tcp", ln.Addr().String())
				require.NoError(t, err)
				defer c.Close()
				conns = append(conns, c)
			}
			for i, c := range conns {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				msg := []byte("conn " + strconv.Itoa(i))
				_, err := c.Write(msg)
				require.NoError(t, err)
				got := make([]byte, len(msg))
				_, err = io.ReadFull(c, got)
				require.NoError(t, err)
				require.Equal(t, msg, got)
			}
			require.NoError(t, ctx.Destroy())
			require.NoError(t, <-done)
			<-ctx.Done()

			mu.Lock()
			defer mu.Unlock()
			require.Len(t, perThread, 3, "every thread got connections: %v", perThread)
			perThread[0]++ // thread 0 also holds the listener, which counts as load
			lo, hi := 99, 0
			for _, n := range perThread {
				lo, hi = min(lo, n), max(hi, n)
			}
			require.LessOrEqual(t, hi-lo, 1, "least-loaded placement spreads evenly: %v", perThread)
			seen := map[uint64]int{}
			for i, g := range goroutines {
				require.Len(t, g, 1, "thread %d ran its callbacks on one goroutine", i)
				for id := range g {
					_, dup := seen[id]
					require.False(t, dup, "threads share a goroutine")
					seen[id] = i
				}
			}
		})
	}
}

// Each thread stops at its own limit; the listener stops accepting only when
// every thread is full.
func TestSMPFDLimitPerThread(t *testing.T) {
	adopted := 0
	var mu sync.Mutex
	ctx, err := core.New(core.Info{CountThreads: 2, FDLimitPerThread: 3, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawAdopt {
			mu.Lock()
			adopted++
			mu.Unlock()
		}
		return nil
	}}}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	for range 8 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer c.Close()
	}
	// thread 0 holds the listener: 2 + 3 connections fit
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return adopted == 5 }, 10*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // give a wrong extra accept the chance to show
	mu.Lock()
	require.Equal(t, 5, adopted)
	mu.Unlock()
	require.NoError(t, ctx.Destroy())
	require.NoError(t, <-done)
}

// runReusePort runs an echo context of two threads with a SO_REUSEPORT
// listener; done gets Run's result.
func runReusePort(t *testing.T) (*core.Context, *core.Listener, chan error) {
	ctx, err := core.New(core.Info{CountThreads: 2, ReusePort: true, Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	return ctx, ln, done
}

// With ReusePort every thread has a listener of its own on the same port,
// and the kernel spreads connections over them.
func TestSMPReusePort(t *testing.T) {
	ctx, ln, done := runReusePort(t)
	for i := range 16 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := []byte("n" + strconv.Itoa(i))
		_, err = c.Write(msg)
		require.NoError(t, err)
		_, err = io.ReadFull(c, msg)
		require.NoError(t, err)
		c.Close()
	}
	for i := range 2 {
		require.NotZero(t, ctx.Thread(i).Stats().Accepts, "thread %d accepted on its own listener", i)
	}
	require.NoError(t, ctx.Destroy())
	require.NoError(t, <-done)
}

// Listener.Close of a SO_REUSEPORT group closes the other threads'
// sockets at once when those threads are idle: it only posted their
// close, so they went on listening (a dial after Close connected, and the
// next pass accepted it) until their threads ran.
func TestSMPReusePortCloseStopsListening(t *testing.T) {
	adopted := 0
	ctx, err := core.New(core.Info{CountThreads: 2, ReusePort: true,
		Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonRawAdopt {
				adopted++
			}
			return nil
		}}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	require.NoError(t, ln.Close())
	c, err := net.Dial("tcp", ln.Addr().String())
	if err == nil {
		c.Close()
	}
	require.ErrorIs(t, err, syscall.ECONNREFUSED, "a dial after Close")
	for i := range 2 {
		require.NoError(t, ctx.Thread(i).Service(0))
	}
	require.Zero(t, adopted)
}

// While Run services the threads, Close (from thread 0's pass) has thread
// 1 close its socket in its own pass: after that no dial connects.
func TestSMPReusePortCloseWhileRunning(t *testing.T) {
	ctx, ln, done := runReusePort(t)
	closed := make(chan error, 1)
	require.NoError(t, ctx.Thread(0).Post(func() { closed <- ln.Close() }))
	require.NoError(t, <-closed)
	// Thread 1 closes its socket in its next pass, which the first Post
	// below joins, and the close(2) at that pass's end, before the second
	// Post's pass.
	for range 2 {
		passed := make(chan struct{})
		require.NoError(t, ctx.Thread(1).Post(func() { close(passed) }))
		<-passed
	}
	_, err := net.Dial("tcp", ln.Addr().String())
	require.ErrorIs(t, err, syscall.ECONNREFUSED, "a dial after both threads saw the close")
	require.NoError(t, ctx.Destroy())
	require.NoError(t, <-done)
}

// CallbackOnWritableAll and RxFlowControlAll reach every connection of the
// protocol on every thread, each on its own thread, whether called from
// another goroutine while Run services the threads or from a callback of
// one thread.
func TestAllProtocolCallsOnEveryThread(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var mu sync.Mutex
			adopted := map[*core.Conn]int{}
			writeable := map[*core.Conn]int{}
			rx := 0
			wrongThread := 0
			proto := core.Protocol{Name: "p", Callback: func(ev core.Event) error {
				if ev.Conn == nil {
					return nil
				}
				mu.Lock()
				defer mu.Unlock()
				if ev.Conn.Thread() != ev.Thread {
					wrongThread++
				}
				switch ev.Reason {
				case core.ReasonRawAdopt:
					adopted[ev.Conn] = ev.Thread.Index()
				case core.ReasonRawWriteable:
					writeable[ev.Conn]++
				case core.ReasonRawRX:
					rx += len(ev.Data)
				}
				return nil
			}}
			ctx, err := core.New(core.Info{EventLib: lib, CountThreads: 3, Protocols: []core.Protocol{proto}})
			require.NoError(t, err)
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() { done <- ctx.Run(context.Background()) }()
			defer func() {
				ctx.Destroy()
				<-done
			}()
			var peers []net.Conn
			for range 6 {
				c, err := net.Dial("tcp", ln.Addr().String())
				require.NoError(t, err)
				defer c.Close()
				peers = append(peers, c)
			}
			waitFor := func(what string, cond func() bool) {
				t.Helper()
				deadline := time.Now().Add(10 * time.Second)
				for {
					mu.Lock()
					ok := cond()
					mu.Unlock()
					if ok {
						return
					}
					require.True(t, time.Now().Before(deadline), what)
					time.Sleep(time.Millisecond)
				}
			}
			threads := map[int]bool{}
			waitFor("every connection adopted", func() bool { return len(adopted) == 6 })
			mu.Lock()
			for _, i := range adopted {
				threads[i] = true
			}
			mu.Unlock()
			require.Len(t, threads, 3, "the connections are spread over the threads")

			// From a goroutine outside the loop.
			require.NoError(t, ctx.CallbackOnWritableAll("p"))
			waitFor("RAW_WRITEABLE on every connection", func() bool {
				for c := range adopted {
					if writeable[c] < 1 {
						return false
					}
				}
				return true
			})
			// From a callback of thread 0.
			errc := make(chan error, 1)
			require.NoError(t, ctx.Thread(0).Post(func() { errc <- ctx.CallbackOnWritableAll("p") }))
			require.NoError(t, <-errc)
			waitFor("a second RAW_WRITEABLE on every connection", func() bool {
				for c := range adopted {
					if writeable[c] < 2 {
						return false
					}
				}
				return true
			})

			// Paused everywhere, nothing is received; resumed, all of it.
			require.NoError(t, ctx.RxFlowControlAll("p", false))
			sync := func(i int) {
				ch := make(chan struct{})
				require.NoError(t, ctx.Thread(i).Post(func() { close(ch) }))
				<-ch
			}
			for i := range 3 {
				sync(i) // every thread has paused its connections
			}
			for _, c := range peers {
				_, err := c.Write([]byte("0123456789"))
				require.NoError(t, err)
			}
			for range 2 {
				for i := range 3 {
					sync(i)
				}
			}
			mu.Lock()
			require.Zero(t, rx, "RAW_RX while rx was paused on every thread")
			mu.Unlock()
			require.NoError(t, ctx.RxFlowControlAll("p", true))
			waitFor("every byte once rx resumed", func() bool { return rx == 60 })
			mu.Lock()
			require.Zero(t, wrongThread, "a callback on another thread than its connection's")
			mu.Unlock()
			require.ErrorIs(t, ctx.CallbackOnWritableAll("nope"), core.ErrUnknownProtocol)
		})
	}
}

// RxFlowControlAll from a goroutine outside the loop, while the loop is
// busy in a callback, is posted: its work (here a CHANGE_MODE_POLL_FD)
// runs on the loop's goroutine once the callback returns, never beside it.
// Builds without the race detector cannot tell goroutines apart by their
// state alone, so this is the case that must hold there.
func TestAllFromOutsideWhileBusy(t *testing.T) {
	var loopG, stranger atomic.Uint64
	var busy, paused atomic.Bool
	var first atomic.Int32
	first.Store(-1)
	ctx, err := core.New(core.Info{EventLib: "epoll", Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if g := goid.ID(); busy.Load() && g != loopG.Load() {
			stranger.Store(g)
		}
		switch ev.Reason {
		case core.ReasonChangeModePollFD:
			if int32(ev.Poll.FD) == first.Load() && ev.Poll.Events == 0 {
				paused.Store(true) // input came while paused: read interest dropped
			}
		case core.ReasonRawAdopt:
			loopG.Store(goid.ID())
			if first.CompareAndSwap(-1, int32(ev.Conn.FD())) {
				return ev.Conn.RxFlowControl(false)
			}
		case core.ReasonRawRX:
			busy.Store(true)
			time.Sleep(200 * time.Millisecond) // busy in a callback meanwhile
			busy.Store(false)
		}
		return nil
	}}}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	defer func() { ctx.Destroy(); <-done }()

	a, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer a.Close()
	_, err = a.Write([]byte("a"))
	require.NoError(t, err)
	for !paused.Load() {
		time.Sleep(time.Millisecond)
	}
	b, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer b.Close()
	_, err = b.Write([]byte("b"))
	require.NoError(t, err)
	for !busy.Load() {
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, ctx.RxFlowControlAll("", true))
	resumed := make(chan struct{})
	require.NoError(t, ctx.Thread(0).Post(func() { close(resumed) }))
	<-resumed
	require.Zero(t, stranger.Load(), "a callback ran on the calling goroutine while the loop was busy in another")
}
