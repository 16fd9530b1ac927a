//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// detachedRig is a connection paused from its adoption, and its peer.
type detachedRig struct {
	ctx     *core.Context
	cli     *net.TCPConn
	sent    []byte
	closed  chan error
	got     []byte // loop goroutine only
	conn    *core.Conn
	runDone chan error
}

func newDetachedRig(t *testing.T) *detachedRig {
	noLeaks(t)
	r := &detachedRig{closed: make(chan error, 1), runDone: make(chan error, 1)}
	ctx, err := core.New(core.Info{
		EventLib:     evlib_netpoll.Name,
		CloseTimeout: time.Minute,
		Protocols: []core.Protocol{{Name: "paused", Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				r.conn = ev.Conn
				return ev.Conn.RxFlowControl(false)
			case core.ReasonRawRX:
				r.got = append(r.got, ev.Data...)
			case core.ReasonRawClose:
				r.closed <- ev.Err
			}
			return nil
		}}},
	})
	require.NoError(t, err)
	r.ctx = ctx
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "paused")
	require.NoError(t, err)
	go func() { r.runDone <- ctx.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx.Destroy()
		<-r.runDone
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	r.cli = c.(*net.TCPConn)
	t.Cleanup(func() { r.cli.Close() })
	require.NoError(t, r.cli.SetWriteBuffer(16<<10))
	return r
}

// noLeaks checks, when t ends, that the process is back to the goroutines
// and descriptors it had now: a detached stream's dup, its hang-up helper
// and its reader go with its connection.
func noLeaks(t *testing.T) {
	netpoll.Initialize() // netpoll's pollers stay for good
	if ln, err := net.Listen("tcp4", "127.0.0.1:0"); err == nil {
		ln.Close() // so does the runtime's poller
	}
	baseG, baseFDs := runtime.NumGoroutine(), countFDs(t)
	t.Cleanup(func() {
		waitUntil(t, "goroutines or descriptors left behind", func() bool {
			return runtime.NumGoroutine() <= baseG && countFDs(t) <= baseFDs
		})
	})
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// fillUntilBlocked writes to cli until it stays blocked and returns what
// it wrote. On a paused connection that means the backend took it out of
// netpoll's poller; otherwise netpoll would keep draining the socket.
func fillUntilBlocked(t *testing.T, cli *net.TCPConn) []byte {
	rc, err := cli.SyscallConn()
	require.NoError(t, err)
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	var sent []byte
	var werr error
	for blocked := false; !blocked; {
		require.NoError(t, rc.Write(func(fd uintptr) bool {
			for {
				n, err := unix.Write(int(fd), chunk)
				if n > 0 {
					sent = append(sent, chunk[:n]...)
				}
				if err != nil {
					if !errors.Is(err, unix.EAGAIN) {
						werr = err
					}
					return true
				}
			}
		}))
		require.NoError(t, werr)
		require.Less(t, len(sent), 256<<20, "the peer never blocked: netpoll kept reading a paused connection")
		// Blocked for good: still full after a while.
		require.NoError(t, rc.Control(func(fd uintptr) {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			n, _ := unix.Poll(p, 100)
			blocked = n == 0
		}))
	}
	return sent
}

// do runs f on the loop and waits for it.
func (r *detachedRig) do(t *testing.T, f func()) { onLoop(t, r.ctx, f) }

// onLoop runs f on ctx's service thread and waits for it.
func onLoop(t *testing.T, ctx *core.Context, f func()) {
	done := make(chan struct{})
	require.NoError(t, ctx.Thread(0).Post(func() { f(); close(done) }))
	<-done
}

// waitUntil polls cond until it holds (hang guard: 20 s).
func waitUntil(t *testing.T, what string, cond func() bool) {
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "%s (hang guard)", what)
		time.Sleep(time.Millisecond)
	}
}

// learntHangup waits until the core read the paused connection, which it
// does only once it learnt that the peer hung up, checks that nothing was
// delivered or closed meanwhile, resumes it and returns RAW_CLOSE's error.
func (r *detachedRig) learntHangup(t *testing.T) error {
	waitUntil(t, "the core never read the paused connection after its peer hung up", func() bool {
		return r.ctx.Stats().Reads >= 2
	})
	var n int
	var closed bool
	r.do(t, func() { n, closed = len(r.got), r.conn.Closed() })
	require.Zero(t, n, "RAW_RX while paused")
	require.False(t, closed, "closed while paused input was still buffered")
	var err error
	r.do(t, func() { err = r.conn.RxFlowControl(true) })
	require.NoError(t, err)
	select {
	case err = <-r.closed:
	case <-time.After(20 * time.Second):
		t.Fatal("no RAW_CLOSE after resume (hang guard)")
	}
	return err
}

// A detached connection whose peer resets learns of it while still
// paused (the runtime-poller helper sees the reset netpoll no longer
// watches), and after resume gets what it could read, then RAW_CLOSE with
// ECONNRESET.
func TestDetachedReset(t *testing.T) {
	r := newDetachedRig(t)
	r.sent = fillUntilBlocked(t, r.cli)
	require.NoError(t, r.cli.SetLinger(0))
	require.NoError(t, r.cli.Close())
	require.ErrorIs(t, r.learntHangup(t), unix.ECONNRESET)
	var got []byte
	r.do(t, func() { got = r.got })
	require.NotEmpty(t, got, "what netpoll held was delivered")
	require.True(t, bytes.HasPrefix(r.sent, got), "bytes delivered out of order or altered")
}

// A detached connection whose peer closes learns of it while paused, and
// after resume gets every byte the peer sent, in order, then RAW_CLOSE
// with io.EOF. (The peer writes no more than netpoll and the kernel take
// without a read: a FIN behind data the receiver has no room for cannot
// arrive, on any backend.)
func TestDetachedFIN(t *testing.T) {
	r := newDetachedRig(t)
	before := evlib_netpoll.Detaches()
	// Less than the kernel's socket buffers take: the FIN can follow.
	r.sent = make([]byte, 64<<10)
	for i := range r.sent {
		r.sent[i] = byte(i * 13)
	}
	_, err := r.cli.Write(r.sent)
	require.NoError(t, err)
	waitUntil(t, "the paused connection was not taken out of netpoll", func() bool {
		return evlib_netpoll.Detaches() > before
	})
	require.NoError(t, r.cli.Close())
	require.ErrorIs(t, r.learntHangup(t), io.EOF)
	var got []byte
	r.do(t, func() { got = r.got })
	require.Equal(t, len(r.sent), len(got), "bytes delivered")
	require.True(t, bytes.Equal(r.sent, got), "bytes delivered out of order or altered")
}

// A connection detached and resumed twice in a row loses nothing, and goes
// back to netpoll each time its core has caught up.
func TestDetachTwice(t *testing.T) {
	r := newDetachedRig(t)
	d0 := evlib_netpoll.Detaches()
	r.sent = fillUntilBlocked(t, r.cli)
	require.Greater(t, evlib_netpoll.Detaches(), d0, "the peer blocked, yet the stream was never taken out of netpoll")
	resumeAll := func(want int) {
		a0 := evlib_netpoll.Reattaches()
		var err error
		r.do(t, func() { err = r.conn.RxFlowControl(true) })
		require.NoError(t, err)
		waitUntil(t, "not every byte arrived after resume", func() bool {
			var n int
			r.do(t, func() { n = len(r.got) })
			return n >= want
		})
		waitUntil(t, "the stream did not go back to netpoll once its core caught up", func() bool {
			return evlib_netpoll.Reattaches() > a0
		})
		r.do(t, func() { err = r.conn.RxFlowControl(false) })
		require.NoError(t, err)
	}
	resumeAll(len(r.sent))
	first := len(r.sent)
	// The peer can write again: fill until blocked once more.
	d1 := evlib_netpoll.Detaches()
	more := fillUntilBlocked(t, r.cli)
	require.NotEmpty(t, more)
	require.Greater(t, evlib_netpoll.Detaches(), d1, "blocked the second time without a detach")
	r.sent = append(r.sent, more...)
	resumeAll(first + len(more))
	var got []byte
	r.do(t, func() { got = r.got })
	require.True(t, bytes.Equal(r.sent, got), "bytes delivered out of order or altered")
}

// A detached stream that cannot go back to netpoll because the process is
// out of descriptors delivers everything it read and then closes with an
// error that says why (EMFILE), leaking nothing.
func TestReattachAtFDLimit(t *testing.T) {
	r := newDetachedRig(t)
	r.sent = fillUntilBlocked(t, r.cli)

	// Leave no descriptor free. netpoll's dups take numbers from 1024 up
	// (see dupFD), so with the soft limit at 1024 and every number below
	// it taken, the held dup the core closes on the way frees nothing
	// usable.
	var rl unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &rl))
	require.GreaterOrEqual(t, rl.Cur, uint64(2048), "the test needs a soft fd limit of 2048 or more, for netpoll's dups to sit above 1024")
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	above := 0
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil && fd >= 1024 {
			above++
		}
	}
	require.NotZero(t, above, "no netpoll dup above 1024")
	low := rl
	low.Cur = 1024
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &low))
	var fillers []int
	release := func() {
		for _, fd := range fillers {
			unix.Close(fd)
		}
		fillers = nil
		require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &rl))
	}
	defer release()
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			require.ErrorIs(t, err, unix.EMFILE)
			break
		}
		fillers = append(fillers, fd)
	}

	require.NoError(t, r.ctx.Thread(0).Post(func() { _ = r.conn.RxFlowControl(true) }))
	select {
	case err := <-r.closed:
		require.ErrorIs(t, err, unix.EMFILE)
	case <-time.After(20 * time.Second):
		t.Fatal("no RAW_CLOSE for a stream that could not go back to netpoll (hang guard)")
	}
	release()
	var got []byte
	r.do(t, func() { got = r.got })
	require.Equal(t, len(r.sent), len(got), "bytes delivered before the close")
	require.True(t, bytes.Equal(r.sent, got), "bytes delivered out of order or altered")
}
