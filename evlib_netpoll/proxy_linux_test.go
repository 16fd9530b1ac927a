//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A TCP proxy on netpoll (examples/proxy's callback path, as in the
// bench's relay scenario): a source pushes bulk data into a plugloop
// connection, paused until its upstream connection (made with Connect) is
// established, whose input then goes on to the upstream by RAW_RX and
// Write, rx paused while high water waits for the upstream. The proxy is
// slower than the source and netpoll. netpoll must hold no more of the
// source than MaxReadAhead and what it reads before the backend next looks
// (see the package documentation), and every byte must reach the
// upstream's peer, in order.
//
// Before the fix, the source's reader parked at the first pause with input
// held (a paused connection's input waits until it resumes) and stayed
// parked until netpoll's buffer was empty, which, with the source ahead,
// it never was again. The read-ahead check ran only on the reader, so it
// never ran, and a pause shorter than DetachDelay (here the one while the
// upstream connects; in the bench the high-water pauses) took nothing out
// of netpoll: netpoll's buffer grew with all the source sent (here tens of
// MB; in the relay scenario hundreds, where netpoll's 8 MB readv calls into
// fresh memory then held the only P).
//
// Nothing here depends on timing. What netpoll holds of the source is
// asked of the socket, on the loop: what the kernel received
// (tcpi_bytes_received) less what it still holds (SIOCINQ) less what RAW_RX
// delivered. The proxy is slow by waiting, at each RAW_RX, until netpoll
// got a chunk further ahead (or took the stream out of its poller); the
// source writes a step for each RAW_RX, at most two behind, and its socket
// buffers are small, so bytes, not time, bound what netpoll can read
// between two of the core's reads. The source is resumed only once its
// reader parked (Parks), so the state the bug needs is reached every run,
// however long the upstream's connect takes.
func TestReadAheadBoundProxy(t *testing.T) {
	noLeaks(t)
	const (
		total     = 48 << 20
		chunk     = 64 << 10 // RxChunk; the core reads up to 64 KiB at a time
		highWater = 256 << 10
		lowWater  = 64 << 10
		rcvBuf    = 256 << 10 // SO_RCVBUF of the proxy's source socket (the kernel doubles it)
		srcBuf    = 128 << 10 // SO_SNDBUF of the source (doubled too)
		step      = 256 << 10 // what the source writes for each RAW_RX: four times what the core takes
		queued    = 2         // RAW_RXs the source may be behind on
	)
	// What netpoll may read between two reads of the core: what the two
	// socket buffers hold, the source's write in progress and the queued
	// ones, and one chunk (1.6 MiB); the rest of 2 MiB is margin.
	const bound = evlib_netpoll.MaxReadAhead + 2<<20
	require.Less(t, 2*rcvBuf+2*srcBuf+(1+queued)*step+chunk, 2<<20)

	sent := make([]byte, total)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range sent {
		sent[i] = byte(rng.Uint32())
	}

	// The upstream: a peer that takes all it gets.
	upLn, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer upLn.Close()
	sinkDone := make(chan []byte, 1)
	sinkErr := make(chan error, 1)
	go func() {
		c, err := upLn.Accept()
		if err != nil {
			sinkErr <- err
			return
		}
		defer c.Close()
		got := make([]byte, 0, total)
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			switch {
			case err == io.EOF:
				sinkDone <- got
				return
			case err != nil:
				sinkErr <- err
				return
			}
		}
	}()

	// The proxy (examples/proxy's callback path). Its fields are the
	// loop's.
	type side struct {
		conn   *core.Conn
		other  *side
		out    []byte
		paused bool
		endOut bool
	}
	var (
		ctx       *core.Context
		delivered int64 // RAW_RX bytes from the source
		maxHeld   int64 // the most netpoll held of the source at a RAW_RX
		heldErr   error
		failed    = make(chan error, 1)
		srcDone   atomic.Bool
		detaches0 = evlib_netpoll.Detaches()
		consumed  = make(chan struct{}, queued) // a RAW_RX: the source may write a step more
	)
	waiting := func(s *side) int { return len(s.out) + s.conn.Buffered() }
	// held asks the socket how much of the source netpoll holds.
	held := func(c *core.Conn) int64 {
		ti, err := unix.GetsockoptTCPInfo(c.FD(), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err == nil {
			var inq int
			if inq, err = unix.IoctlGetInt(c.FD(), unix.SIOCINQ); err == nil {
				h := int64(ti.Bytes_received) - int64(inq) - delivered
				maxHeld = max(maxHeld, h)
				return h
			}
		}
		if heldErr == nil {
			heldErr = err
		}
		return 0
	}
	var resumeWhenParked func(src *side, parks int64)
	// resumeWhenParked resumes the source once its reader has parked with
	// input that came during the pause (the upstream may connect before
	// any came), yielding the loop meanwhile.
	resumeWhenParked = func(src *side, parks int64) {
		if evlib_netpoll.Parks() == parks {
			_ = ctx.Thread(0).Post(func() { resumeWhenParked(src, parks) })
			return
		}
		src.paused = false
		if err := src.conn.RxFlowControl(true); err != nil {
			select {
			case failed <- err:
			default:
			}
		}
	}
	cb := func(ev core.Event) error {
		c := ev.Conn
		switch ev.Reason {
		case core.ReasonRawAdopt:
			if up, ok := c.User().(*side); ok {
				// The upstream is connected.
				src := up.other
				parks := src.conn.User().(int64)
				src.conn.SetUser(src)
				resumeWhenParked(src, parks)
				return nil
			}
			if err := unix.SetsockoptInt(c.FD(), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf); err != nil {
				return err
			}
			src := &side{conn: c, paused: true}
			up := &side{other: src}
			src.other = up
			c.SetUser(evlib_netpoll.Parks()) // until the upstream is connected
			if err := c.RxFlowControl(false); err != nil {
				return err
			}
			uc, err := ctx.Connect("tcp4", upLn.Addr().String(), "proxy", core.WithUser(up))
			up.conn = uc
			return err
		case core.ReasonRawRX:
			s := c.User().(*side)
			delivered += int64(len(ev.Data))
			// The proxy is slower than netpoll: it lets the source write
			// a step more, and goes on only once netpoll got at least a
			// chunk further ahead, or took the stream out of its poller,
			// or the source is done.
			start := held(c)
			select {
			case consumed <- struct{}{}:
			default: // the source is behind: it has steps to write
			}
			for deadline := time.Now().Add(time.Minute); held(c) < start+chunk && start <= bound &&
				evlib_netpoll.Detaches() == detaches0 && !srcDone.Load(); {
				if time.Now().After(deadline) {
					return errors.New("netpoll read nothing more (hang guard)")
				}
				time.Sleep(20 * time.Microsecond)
			}
			o := s.other
			o.out = append(o.out, ev.Data...)
			if err := o.conn.CallbackOnWritable(); err != nil {
				return err
			}
			if waiting(o) >= highWater && !s.paused {
				s.paused = true
				return c.RxFlowControl(false)
			}
		case core.ReasonRawWriteable:
			s := c.User().(*side)
			if len(s.out) > 0 {
				if _, err := c.Write(s.out); err != nil {
					return err
				}
				s.out = s.out[:0]
			}
			if s.endOut {
				s.endOut = false
				return c.CloseWrite()
			}
			if o := s.other; o.paused {
				if waiting(s) >= lowWater {
					return c.CallbackOnWritable()
				}
				o.paused = false
				return o.conn.RxFlowControl(true)
			}
		case core.ReasonRawRxEnd:
			o := c.User().(*side).other
			if len(o.out) > 0 {
				o.endOut = true
				return nil
			}
			return o.conn.CloseWrite()
		case core.ReasonClientConnectionError:
			select {
			case failed <- errors.New("the upstream connect failed"):
			default:
			}
		case core.ReasonRawClose:
			if ev.Err != nil && !errors.Is(ev.Err, io.EOF) {
				select {
				case failed <- ev.Err:
				default:
				}
			}
		}
		return nil
	}
	ctx, err = core.New(core.Info{
		EventLib:  evlib_netpoll.Name,
		Protocols: []core.Protocol{{Name: "proxy", Callback: cb, RxChunk: chunk, AllowHalfOpen: true}},
	})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "proxy")
	require.NoError(t, err)
	runDone := make(chan error, 1)
	go func() { runDone <- ctx.Run(context.Background()) }()
	defer func() { ctx.Destroy(); <-runDone }()

	// The source writes with blocking system calls on a blocking socket:
	// it wakes as soon as the kernel takes more, not when the runtime's
	// poller next looks (with the loop and netpoll busy, that can be
	// milliseconds).
	srcFD := blockingDial(t, ln.Addr().(*net.TCPAddr))
	require.NoError(t, unix.SetsockoptInt(srcFD, unix.SOL_SOCKET, unix.SO_SNDBUF, srcBuf))
	srcErr := make(chan error, 1)
	go func() {
		for off := 0; off < total; {
			n := min(step, total-off)
			if off == 0 {
				n = 2 * step // input to arrive during the pause
			}
			if err := writeAll(srcFD, sent[off:off+n]); err != nil {
				srcErr <- err
				return
			}
			if off += n; off < total {
				<-consumed
			}
		}
		srcDone.Store(true)
		srcErr <- unix.Shutdown(srcFD, unix.SHUT_WR)
	}()

	var got []byte
	select {
	case got = <-sinkDone:
	case err := <-sinkErr:
		t.Fatalf("upstream peer: %v", err)
	case err := <-failed:
		t.Fatalf("proxy: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the data never all arrived (hang guard)")
	}
	require.NoError(t, <-srcErr)
	require.Equal(t, len(sent), len(got), "the upstream's peer got a different length")
	require.True(t, bytes.Equal(sent, got), "bytes altered or out of order")
	var most int64
	var herr error
	onLoop(t, ctx, func() { most, herr = maxHeld, heldErr })
	require.NoError(t, herr)
	t.Logf("netpoll held at most %d bytes of the source; %d detaches", most, evlib_netpoll.Detaches()-detaches0)
	require.LessOrEqual(t, most, int64(bound), "netpoll read far more than MaxReadAhead ahead of the core")
}

// blockingDial connects a blocking TCP socket to addr, closed when t ends.
func blockingDial(t *testing.T, addr *net.TCPAddr) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	sa := &unix.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	require.NoError(t, unix.Connect(fd, sa))
	return fd
}

// writeAll writes p to a blocking socket.
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}
