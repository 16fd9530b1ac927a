//go:build unix

package core_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/stretchr/testify/require"
)

func goroutineID() uint64 {
	var b [64]byte
	s := b[:runtime.Stack(b[:], false)]
	s = bytes.TrimPrefix(s, []byte("goroutine "))
	id, _ := strconv.ParseUint(string(s[:bytes.IndexByte(s, ' ')]), 10, 64)
	return id
}

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
					goroutines[i][goroutineID()] = true
					if ev.Conn != nil {
						require.Equal(t, i, ev.Conn.Thread().Index())
						if ev.Reason == core.ReasonRawAdopt {
							owner[ev.Conn] = i
							perThread[i]++
						}
						if o, ok := owner[ev.Conn]; ok {
							require.Equal(t, o, i, "serviced by its own thread only")
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

// With ReusePort every thread has a listener of its own on the same port,
// and the kernel spreads connections over them.
func TestSMPReusePort(t *testing.T) {
	ctx, err := core.New(core.Info{CountThreads: 2, ReusePort: true, Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
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
