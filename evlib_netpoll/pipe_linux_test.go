//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_epoll"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

type sinkFunc func(fd int, ev evlib.Events)

func (f sinkFunc) Ready(fd int, ev evlib.Events) { f(fd, ev) }

// watchedPipe makes a non-blocking pipe and a backend (by newBackend)
// whose sink adds what it reports for the read end r to *got. The backend
// and r are closed with the test; w is the caller's.
func watchedPipe(t *testing.T, newBackend func(evlib.Config) (evlib.Backend, error)) (r, w int, be evlib.Backend, got *evlib.Events) {
	t.Helper()
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	r, w = p[0], p[1]
	t.Cleanup(func() { unix.Close(r) })
	got = new(evlib.Events)
	be, err := newBackend(evlib.Config{
		Sink: sinkFunc(func(fd int, ev evlib.Events) {
			if fd == r {
				*got |= ev
			}
		}),
		Counters: &evlib.Counters{}, MaxFDs: 1 << 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return r, w, be, got
}

// Input that reaches a pipe while its rx is paused wakes the read helper,
// which then watches for the pipe's end only, and uses up the runtime
// poller's edge. Once rx resumes, the pipe must be reported Readable for
// as long as it holds input (level-triggered), here through a read of one
// byte per report, and new input after it was emptied must be reported
// again.
func TestPipePausedInputReportedUntilRead(t *testing.T) {
	r, w, be, got := watchedPipe(t, evlib_netpoll.New)
	defer unix.Close(w)
	// pollFor polls until r is reported (hang guard: 10 s).
	pollFor := func(what string) evlib.Events {
		*got = 0
		deadline := time.Now().Add(10 * time.Second)
		for *got == 0 {
			require.True(t, time.Now().Before(deadline), "%s: not reported", what)
			_, err := be.Poll(100 * time.Millisecond)
			require.NoError(t, err)
		}
		return *got
	}

	require.NoError(t, be.Add(r, evlib.KindFile, evlib.Readable))
	_, err := be.Poll(0) // the read helper starts and waits: the pipe is empty
	require.NoError(t, err)
	require.NoError(t, be.Modify(r, 0)) // rx paused
	_, err = be.Poll(0)
	require.NoError(t, err)
	const msg = "0123456789"
	_, err = unix.Write(w, []byte(msg))
	require.NoError(t, err)
	time.Sleep(20 * time.Millisecond) // for the helper to be woken by it
	_, err = be.Poll(0)
	require.NoError(t, err)
	require.NoError(t, be.Modify(r, evlib.Readable)) // rx resumed

	buf := make([]byte, 1)
	for i := range len(msg) {
		require.NotZero(t, pollFor(fmt.Sprintf("pipe holding input after resume, byte %d", i))&evlib.Readable)
		n, err := be.(evlib.IO).Read(r, buf)
		require.NoError(t, err, "byte %d", i)
		require.Equal(t, 1, n)
		require.Equal(t, msg[i], buf[0])
	}
	_, err = unix.Write(w, []byte("x"))
	require.NoError(t, err)
	require.NotZero(t, pollFor("new input after the pipe was emptied")&evlib.Readable)
	n, err := be.(evlib.IO).Read(r, buf)
	require.NoError(t, err)
	require.Equal(t, "x", string(buf[:n]))
}

// The same through the core: a pipe adopted with AdoptFile, its rx paused
// while input arrives, then resumed; RAW_RX_FILE reads one byte a time and
// must get all of it. epoll shows what the contract asks for.
func TestCorePipeResumeAfterPausedInput(t *testing.T) {
	for _, lib := range []string{"epoll", evlib_netpoll.Name} {
		t.Run(lib, func(t *testing.T) {
			var p [2]int
			require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
			r, w := p[0], p[1]
			defer unix.Close(w)
			const msg = "0123456789"
			var n atomic.Int32
			ctx, _ := running(t, lib, func(ev core.Event) error {
				if ev.Reason == core.ReasonRawRXFile {
					b := make([]byte, 1)
					if k, _ := unix.Read(ev.Conn.FD(), b); k == 1 {
						n.Add(1)
					}
				}
				return nil
			})
			var c *core.Conn
			onLoop(t, ctx, func() {
				var err error
				c, err = ctx.AdoptFile(r, "p")
				require.NoError(t, err)
				require.NoError(t, c.RxFlowControl(false))
			})
			_, err := unix.Write(w, []byte(msg))
			require.NoError(t, err)
			time.Sleep(50 * time.Millisecond) // for the helper to be woken by it
			require.Zero(t, n.Load(), "RAW_RX_FILE while paused")
			onLoop(t, ctx, func() { require.NoError(t, c.RxFlowControl(true)) })
			deadline := time.Now().Add(10 * time.Second)
			for n.Load() < int32(len(msg)) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			require.EqualValues(t, len(msg), n.Load(), "bytes RAW_RX_FILE read (hang guard: 10 s; the pipe holds the rest)")
		})
	}
}

// A pipe's read end whose rx is paused must still be reported Hangup once
// its writer closes (evlib.CapHangupWithoutInterest), also when rx was
// paused after its read helper had found input but before that was
// reported: the helper that found it is gone by then. epoll shows what the
// contract asks for.
func TestPipePausedAfterInputReportsHangup(t *testing.T) {
	for _, lib := range []struct {
		name string
		new  func(evlib.Config) (evlib.Backend, error)
	}{{"epoll", evlib_epoll.New}, {evlib_netpoll.Name, evlib_netpoll.New}} {
		t.Run(lib.name, func(t *testing.T) {
			r, w, be, got := watchedPipe(t, lib.new)
			require.NoError(t, be.Add(r, evlib.KindFile, evlib.Readable))
			_, err := be.Poll(0)
			require.NoError(t, err)
			_, err = unix.Write(w, []byte("ab"))
			require.NoError(t, err)
			time.Sleep(20 * time.Millisecond) // for the read helper to find it
			require.NoError(t, be.Modify(r, 0))
			*got = 0
			_, err = be.Poll(0)
			require.NoError(t, err)
			require.Zero(t, *got&evlib.Readable, "Readable while paused")
			require.NoError(t, unix.Close(w))
			deadline := time.Now().Add(10 * time.Second)
			for *got&evlib.Hangup == 0 {
				require.True(t, time.Now().Before(deadline), "paused pipe's writer closed: no Hangup (hang guard: 10 s)")
				_, err := be.Poll(100 * time.Millisecond)
				require.NoError(t, err)
			}
			require.Zero(t, *got&evlib.Readable, "Readable while paused")
		})
	}
}
