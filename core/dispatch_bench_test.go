//go:build unix

package core_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/echo"
	"golang.org/x/sys/unix"
)

// memBackend is a backend without a kernel under it: each stream it
// watches has a 64-byte message to read whenever the core asks, and takes
// every write whole. It owns its loop (evlib.Looper) and reports one
// stream after another, batch streams per pass, until it has reported n
// messages. The core's own work per message is all that is left to measure:
// the real backends' figures add the system calls and the waits (bench/).
type memBackend struct {
	streams []int
	batch   int
	n       int
	done    chan struct{}
	msg     [64]byte
}

// nextMem is the backend the next "mem-bench" context gets.
var nextMem *memBackend

func init() {
	if err := evlib.Register(evlib.Descriptor{
		Name:     "mem-bench",
		Caps:     evlib.CapBufferedRx | evlib.CapOwnWaker,
		Priority: -1, // never the default of the other tests
		New: func(evlib.Config) (evlib.Backend, error) {
			if nextMem == nil {
				return nil, errors.New("mem-bench: only for BenchmarkDispatch")
			}
			m := nextMem
			nextMem = nil
			return m, nil
		},
	}); err != nil {
		panic(err)
	}
}

func (m *memBackend) Add(fd int, kind evlib.Kind, _ evlib.Events) error {
	if kind == evlib.KindStream {
		m.streams = append(m.streams, fd)
	}
	return nil
}

func (m *memBackend) Modify(int, evlib.Events) error     { return nil }
func (m *memBackend) Remove(int) error                   { return nil }
func (m *memBackend) Poll(time.Duration) (int, error)    { return 0, nil }
func (m *memBackend) Close() error                       { return nil }
func (m *memBackend) Wake() error                        { return nil }
func (m *memBackend) Read(_ int, p []byte) (int, error)  { return copy(p, m.msg[:]), nil }
func (m *memBackend) Write(_ int, p []byte) (int, error) { return len(p), nil }
func (m *memBackend) Shutdown(int) error                 { return nil }
func (m *memBackend) Loop(p evlib.Passer) error {
	i := 0
	for sent := 0; sent < m.n; sent += m.batch {
		for range m.batch {
			p.Ready(m.streams[i], evlib.Readable)
			if i++; i == len(m.streams) {
				i = 0
			}
		}
		p.Pass()
	}
	close(m.done)
	for {
		if _, stop := p.Pass(); stop {
			return nil
		}
	}
}

// benchDispatch measures the core's work for one echoed message (RAW_RX,
// CallbackOnWritable, RAW_WRITEABLE, Write) on 50 connections, with a pass
// after every batch messages: 1 is how a backend that runs the core per
// event (evlib_netpoll) drives it, larger batches how epoll does. idle is
// Info.IdleTimeout: with one, every message reads the thread's clock (once
// per batch) to push the connection's idle deadline back.
func benchDispatch(b *testing.B, batch int, idle time.Duration) {
	m := &memBackend{batch: batch, n: b.N, done: make(chan struct{})}
	nextMem = m
	ctx, err := core.New(core.Info{EventLib: "mem-bench", IdleTimeout: idle, Protocols: []core.Protocol{echo.Protocol("echo")}})
	if err != nil {
		b.Fatal(err)
	}
	defer ctx.Destroy()
	for range 50 {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fds[1])
		if _, err := ctx.AdoptFD(fds[0], "echo"); err != nil {
			unix.Close(fds[0])
			b.Fatal(err)
		}
	}
	run, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	go func() { ran <- ctx.Run(run) }()
	<-m.done
	b.StopTimer()
	stop()
	if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
		b.Fatal(err)
	}
	if st := ctx.Stats(); st.Writes < uint64(b.N) {
		b.Fatalf("%d writes for %d messages: the echo did not run", st.Writes, b.N)
	}
}

func BenchmarkDispatchPerEvent(b *testing.B) { benchDispatch(b, 1, 0) }
func BenchmarkDispatchBatch16(b *testing.B)  { benchDispatch(b, 16, 0) }

func BenchmarkDispatchPerEventIdleTimeout(b *testing.B) { benchDispatch(b, 1, time.Hour) }
func BenchmarkDispatchBatch16IdleTimeout(b *testing.B)  { benchDispatch(b, 16, time.Hour) }
