//go:build unix

package core_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/goid"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// placeLog records, for every connection, where its callbacks ran, and
// echoes stream input so that a connection can be shown to be served.
type placeLog struct {
	mu       sync.Mutex
	running  bool                  // Run services the threads: record goroutines
	adopted  map[*core.Conn]int    // RAW_ADOPT: the thread it ran on
	adoptG   map[*core.Conn]uint64 // RAW_ADOPT: the goroutine it ran on
	threadG  map[int]map[uint64]bool
	connErr  map[*core.Conn]error // CLIENT_CONNECTION_ERROR
	closed   map[*core.Conn]bool
	echo     map[*core.Conn][]byte
	problems []string
	changed  chan struct{}
}

func newPlaceLog() *placeLog {
	return &placeLog{
		adopted: map[*core.Conn]int{}, adoptG: map[*core.Conn]uint64{}, threadG: map[int]map[uint64]bool{},
		connErr: map[*core.Conn]error{}, closed: map[*core.Conn]bool{}, echo: map[*core.Conn][]byte{},
		changed: make(chan struct{}),
	}
}

func (l *placeLog) callback(ev core.Event) error {
	if ev.Conn == nil || ev.Thread == nil {
		return nil
	}
	c := ev.Conn
	l.mu.Lock()
	defer l.mu.Unlock()
	if ev.Thread != c.Thread() {
		l.problems = append(l.problems, fmt.Sprintf("%v of a thread-%d connection ran on thread %d", ev.Reason, c.Thread().Index(), ev.Thread.Index()))
	}
	if l.running {
		i := ev.Thread.Index()
		if l.threadG[i] == nil {
			l.threadG[i] = map[uint64]bool{}
		}
		l.threadG[i][goid.ID()] = true
	}
	switch ev.Reason {
	case core.ReasonRawAdopt, core.ReasonRawAdoptFile:
		l.adopted[c] = ev.Thread.Index()
		l.adoptG[c] = goid.ID()
	case core.ReasonClientConnectionError:
		l.connErr[c] = ev.Err
	case core.ReasonRawClose, core.ReasonRawCloseFile:
		l.closed[c] = true
	case core.ReasonRawRX:
		if !ev.From.IsValid() { // not a datagram
			l.echo[c] = append(l.echo[c], ev.Data...)
			l.mu.Unlock()
			err := c.CallbackOnWritable()
			l.mu.Lock()
			return err
		}
	case core.ReasonRawWriteable:
		p := l.echo[c]
		delete(l.echo, c)
		l.mu.Unlock()
		_, err := c.Write(p)
		l.mu.Lock()
		return err
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return nil
}

// wait waits until cond, checked under the log's lock, holds.
func (l *placeLog) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		ok, ch := cond(), l.changed
		l.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (l *placeLog) verify(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Empty(t, l.problems)
	seen := map[uint64]int{}
	for i, gs := range l.threadG {
		require.Len(t, gs, 1, "thread %d ran its connections' callbacks on one goroutine", i)
		for g := range gs {
			j, dup := seen[g]
			require.False(t, dup, "threads %d and %d share a goroutine", i, j)
			seen[g] = i
		}
	}
}

func placeCtx(t *testing.T, lib string, info core.Info) (*core.Context, *placeLog) {
	t.Helper()
	log := newPlaceLog()
	info.EventLib = lib
	info.Protocols = []core.Protocol{{Name: "p", Callback: log.callback}}
	ctx, err := core.New(info)
	require.NoError(t, err)
	t.Cleanup(func() { ctx.Destroy() })
	return ctx, log
}

// run starts Run on a new goroutine; the returned function destroys the
// context and waits for Run to return.
func run(t *testing.T, ctx *core.Context, log *placeLog) func() {
	t.Helper()
	log.mu.Lock()
	log.running = true
	log.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	return func() {
		t.Helper()
		require.NoError(t, ctx.Destroy())
		require.NoError(t, <-done)
		<-ctx.Done()
	}
}

// acceptor is a plain net.Listener for Connect to reach; it keeps what it
// accepts.
func acceptor(t *testing.T) (addr string, conns <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	ch := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-ch:
				c.Close()
			default:
				return
			}
		}
	})
	return ln.Addr().String(), ch
}

func socketPair(t *testing.T) (fd int, peer net.Conn) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	unix.CloseOnExec(p[0])
	f := os.NewFile(uintptr(p[1]), "peer")
	peer, err = net.FileConn(f)
	f.Close()
	require.NoError(t, err)
	t.Cleanup(func() { peer.Close() })
	return p[0], peer
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Write([]byte(msg))
	require.NoError(t, err)
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, msg, string(got))
}

func least(loads []int) []int {
	m := loads[0]
	for _, v := range loads {
		m = min(m, v)
	}
	var idx []int
	for i, v := range loads {
		if v == m {
			idx = append(idx, i)
		}
	}
	return idx
}

// A batch of AdoptFD, Connect and ListenUDP calls spreads over the
// threads by load, OnThread pins, and once Run services the threads every
// callback of a connection runs on its own thread's goroutine.
func TestAdoptPlacement(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, log := placeCtx(t, lib, core.Info{CountThreads: 3})
			addr, accepted := acceptor(t)
			loads := make([]int, 3)
			var peers []net.Conn // for the adopted streams
			var conns []*core.Conn
			place := func(kind string, opts ...core.AdoptOption) *core.Conn {
				var c *core.Conn
				var err error
				switch kind {
				case "fd":
					fd, peer := socketPair(t)
					c, err = ctx.AdoptFD(fd, "", opts...)
					peers = append(peers, peer)
				case "connect":
					c, err = ctx.Connect("tcp4", addr, "", opts...)
				case "udp":
					c, err = ctx.ListenUDP("udp4", "127.0.0.1:0", "", opts...)
				}
				require.NoError(t, err, kind)
				conns = append(conns, c)
				loads[c.Thread().Index()]++
				return c
			}
			for range 3 {
				for _, kind := range []string{"fd", "connect", "udp"} {
					before := append([]int(nil), loads...)
					c := place(kind)
					require.Contains(t, least(before), c.Thread().Index(), "%s placed on thread %d with loads %v", kind, c.Thread().Index(), before)
				}
			}
			require.Equal(t, []int{3, 3, 3}, loads, "nine calls on three threads")
			for _, kind := range []string{"fd", "connect", "udp", "fd"} {
				require.Equal(t, 2, place(kind, core.OnThread(2)).Thread().Index(), "OnThread(2) pins")
			}
			require.Equal(t, []int{3, 3, 7}, loads)
			for range 2 {
				c := place("fd")
				require.NotEqual(t, 2, c.Thread().Index(), "the pinned thread is the loaded one")
			}
			require.Equal(t, []int{4, 4, 7}, loads)

			// Before Run the calling goroutine adopted each in place.
			log.mu.Lock()
			for _, c := range conns {
				if !c.Connecting() {
					require.Contains(t, log.adopted, c, "RAW_ADOPT ran when the call returned")
				}
			}
			log.mu.Unlock()

			stop := run(t, ctx, log)
			for i, p := range peers {
				roundTrip(t, p, "adopted "+strconv.Itoa(i))
			}
			for range 4 { // the connects
				c := <-accepted
				t.Cleanup(func() { c.Close() })
			}
			log.wait(t, "every connection adopted", func() bool { return len(log.adopted) == len(conns) })
			log.mu.Lock()
			for _, c := range conns {
				require.Equal(t, c.Thread().Index(), log.adopted[c], "RAW_ADOPT on the connection's own thread")
			}
			log.mu.Unlock()
			stop()
			log.verify(t)
		})
	}
}

// From a callback the calls hand each connection to its thread, which
// adopts it on its own goroutine; the calling thread adopts its own share.
func TestAdoptFromCallbackHandsOver(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, log := placeCtx(t, lib, core.Info{CountThreads: 3})
			addr, accepted := acceptor(t)
			stop := run(t, ctx, log)

			type call struct {
				kind string
				opts []core.AdoptOption
			}
			calls := []call{{"fd", nil}, {"fd", nil}, {"fd", nil}, {"connect", nil}, {"udp", nil}, {"file", nil},
				{"fd", []core.AdoptOption{core.OnThread(0)}}, {"fd", []core.AdoptOption{core.OnThread(2)}},
				{"connect", []core.AdoptOption{core.OnThread(1)}}, {"udp", []core.AdoptOption{core.OnThread(2)}}}
			var fds []int
			var peers []net.Conn
			for _, c := range calls {
				if c.kind == "fd" {
					fd, peer := socketPair(t)
					fds, peers = append(fds, fd), append(peers, peer)
				}
			}
			var pipe [2]int
			require.NoError(t, unix.Pipe(pipe[:]))
			t.Cleanup(func() { unix.Close(pipe[1]) })

			var conns []*core.Conn
			var errs []error
			var callerG uint64
			done := make(chan struct{})
			require.NoError(t, ctx.Thread(0).Post(func() {
				defer close(done)
				callerG = goid.ID()
				next := 0
				for _, cl := range calls {
					var c *core.Conn
					var err error
					switch cl.kind {
					case "fd":
						c, err = ctx.AdoptFD(fds[next], "", cl.opts...)
						next++
					case "connect":
						c, err = ctx.Connect("tcp4", addr, "", cl.opts...)
					case "udp":
						c, err = ctx.ListenUDP("udp4", "127.0.0.1:0", "", cl.opts...)
					case "file":
						c, err = ctx.AdoptFile(pipe[0], "", cl.opts...)
					}
					conns, errs = append(conns, c), append(errs, err)
				}
			}))
			<-done
			for i, err := range errs {
				require.NoError(t, err, "call %d (%s)", i, calls[i].kind)
			}
			loads := make([]int, 3)
			for i, c := range conns[:6] {
				require.Contains(t, least(loads), c.Thread().Index(), "call %d (%s) placed on thread %d with loads %v", i, calls[i].kind, c.Thread().Index(), loads)
				loads[c.Thread().Index()]++
			}
			for i, want := range []int{0, 2, 1, 2} {
				require.Equal(t, want, conns[6+i].Thread().Index(), "OnThread pins")
			}

			for i, p := range peers {
				roundTrip(t, p, "handed "+strconv.Itoa(i))
			}
			for range 2 {
				c := <-accepted
				t.Cleanup(func() { c.Close() })
			}
			log.wait(t, "every connection adopted", func() bool { return len(log.adopted) == len(conns) })
			log.mu.Lock()
			threadG := map[int]uint64{}
			for i, gs := range log.threadG {
				for g := range gs {
					threadG[i] = g
				}
			}
			for i, c := range conns {
				ti := c.Thread().Index()
				require.Equal(t, ti, log.adopted[c], "call %d: RAW_ADOPT on its own thread", i)
				require.Equal(t, threadG[ti], log.adoptG[c], "call %d: RAW_ADOPT on thread %d's goroutine", i, ti)
				if ti != 0 {
					require.NotEqual(t, callerG, log.adoptG[c], "call %d: thread %d's RAW_ADOPT ran on the calling thread's goroutine", i, ti)
				}
			}
			log.mu.Unlock()
			stop()
			log.verify(t)
		})
	}
}

// A bad OnThread index is an error wrapping ErrInvalid, and the caller
// keeps what it passed: nothing is adopted, closed or leaked.
func TestAdoptOnThreadOutOfRange(t *testing.T) {
	ctx, log := placeCtx(t, "", core.Info{CountThreads: 3})
	fd, peer := socketPair(t)
	srv, cli := testkit.TCPPair(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	var pipe [2]int
	require.NoError(t, unix.Pipe(pipe[:]))
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	before := openFDs(t)
	for _, i := range []int{3, -1} {
		bad := core.OnThread(i)
		_, err := ctx.AdoptFD(fd, "", bad)
		require.ErrorIs(t, err, core.ErrInvalid, "AdoptFD, OnThread(%d)", i)
		_, err = ctx.AdoptConn(srv, "", bad)
		require.ErrorIs(t, err, core.ErrInvalid, "AdoptConn, OnThread(%d)", i)
		_, err = ctx.AdoptFile(pipe[0], "", bad)
		require.ErrorIs(t, err, core.ErrInvalid, "AdoptFile, OnThread(%d)", i)
		_, err = ctx.AdoptPacketConn(pc, "", bad)
		require.ErrorIs(t, err, core.ErrInvalid, "AdoptPacketConn, OnThread(%d)", i)
		_, err = ctx.ListenUDP("udp4", "127.0.0.1:0", "", bad)
		require.ErrorIs(t, err, core.ErrInvalid, "ListenUDP, OnThread(%d)", i)
		_, err = ctx.Connect("tcp4", "127.0.0.1:1", "", bad)
		require.ErrorIs(t, err, core.ErrInvalid, "Connect, OnThread(%d)", i)
	}
	require.Equal(t, before, openFDs(t), "no fd opened or closed")
	log.mu.Lock()
	require.Empty(t, log.adopted)
	log.mu.Unlock()

	// Everything still works, and still belongs to the caller.
	_, err = unix.Write(fd, []byte("x"))
	require.NoError(t, err)
	require.Equal(t, "x", string(readN(t, peer, 1)))
	_, err = srv.Write([]byte("y"))
	require.NoError(t, err)
	require.Equal(t, "y", string(readN(t, cli, 1)))
	c, err := ctx.AdoptFD(fd, "", core.OnThread(2))
	require.NoError(t, err, "the fd a bad index left alone can be adopted")
	require.Equal(t, 2, c.Thread().Index())
}

// From a goroutine that is in no callback while Run services the threads,
// the calls are refused and the caller keeps its fd.
func TestAdoptFromOutsideWhileRunning(t *testing.T) {
	ctx, log := placeCtx(t, "", core.Info{CountThreads: 3})
	stop := run(t, ctx, log)
	defer stop()
	// Every thread passes through its wait once more: from then on all
	// of them sleep in the backend, none in a callback.
	for i := range 3 {
		th := ctx.Thread(i)
		var w0 uint64
		ran := make(chan struct{})
		require.NoError(t, th.Post(func() { w0 = th.Stats().Waits; close(ran) }))
		<-ran
		require.Eventually(t, func() bool { return th.Stats().Waits > w0 }, 10*time.Second, time.Millisecond)
	}
	fd, peer := socketPair(t)
	for _, opts := range [][]core.AdoptOption{nil, {core.OnThread(1)}} {
		_, err := ctx.AdoptFD(fd, "", opts...)
		require.ErrorIs(t, err, core.ErrWrongGoroutine)
	}
	_, err := unix.Write(fd, []byte("mine"))
	require.NoError(t, err)
	require.Equal(t, "mine", string(readN(t, peer, 4)))
	require.NoError(t, unix.Close(fd))
}

// A handed-over connection that its thread has not adopted yet: Close
// drops it without a callback, and Destroy closes it (a Connect gets
// CLIENT_CONNECTION_ERROR). One goroutine services the threads in turn,
// so the handover waits for thread 1's next pass.
func TestAdoptHandoverDroppedBeforeAdoption(t *testing.T) {
	ctx, log := placeCtx(t, "", core.Info{CountThreads: 2})
	addr, _ := acceptor(t)
	fdA, peerA := socketPair(t)
	fdB, peerB := socketPair(t)
	var a, b, dial *core.Conn
	var errs [3]error
	require.NoError(t, ctx.Thread(0).Post(func() {
		a, errs[0] = ctx.AdoptFD(fdA, "", core.OnThread(1))
		b, errs[1] = ctx.AdoptFD(fdB, "", core.OnThread(1))
		dial, errs[2] = ctx.Connect("tcp4", addr, "", core.OnThread(1))
	}))
	require.NoError(t, ctx.Thread(0).Service(0))
	require.Equal(t, [3]error{}, errs)
	log.mu.Lock()
	require.Empty(t, log.adopted, "handed over, not adopted yet")
	log.mu.Unlock()
	require.False(t, a.Closed())

	require.NoError(t, a.Close())
	require.True(t, a.Closed())
	expectEOF(t, peerA)
	require.NoError(t, ctx.Destroy())
	<-ctx.Done()
	require.True(t, b.Closed())
	expectEOF(t, peerB)
	log.mu.Lock()
	defer log.mu.Unlock()
	require.Empty(t, log.adopted, "no RAW_ADOPT for what was dropped")
	require.ErrorIs(t, log.connErr[dial], core.ErrDestroyed)
	require.Empty(t, log.problems)
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	require.NoError(t, err)
	return b
}

func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, io.EOF)
}

// openFDs lists the process' descriptors.
func openFDs(t *testing.T) []string {
	t.Helper()
	var fds []string
	for fd := range 4096 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			fds = append(fds, strconv.Itoa(fd))
		}
	}
	return fds
}
