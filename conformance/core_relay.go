//go:build unix

package conformance

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// relayTests are the tests of Conn.RelayTo: a connection's input moved to
// another connection by the core, without RAW_RX.
func (s *suite) relayTests() []subtest {
	return []subtest{
		{"RelayBothWays", s.testRelayBothWays},
		{"RelayBackpressure", s.testRelayBackpressure},
		{"RelayFlowControl", s.testRelayFlowControl},
		{"RelayEndWithoutHalfOpen", s.testRelayEndWithoutHalfOpen},
		{"RelayTargetGone", s.testRelayTargetGone},
		{"RelaySourceGone", s.testRelaySourceGone},
		{"RelayEndedSource", s.testRelayEndedSource},
		{"RelayBadInput", s.testRelayBadInput},
	}
}

// relaySplices reports whether the backend's relays splice: on Linux,
// where the core reads its sockets itself. Elsewhere they copy.
func (s *suite) relaySplices() bool {
	return runtime.GOOS == "linux" && s.desc.Caps&evlib.CapBufferedRx == 0
}

// relaySide is one adopted connection of a relay test and the test's end
// of it. Its fields other than conn and peer are the loop's.
type relaySide struct {
	conn     *core.Conn
	peer     *net.TCPConn
	partner  *relaySide
	rx       []byte // RAW_RX data
	rxEnd    int    // RAW_RX_END
	endErr   error  // the partner's CloseWrite at RAW_RX_END
	closed   bool
	closeErr error
	// relayAtRX: the first RAW_RX calls RelayTo to it, with relayErr.
	relayAtRX *relaySide
	relayErr  error
}

type relayRig struct {
	h    *harness
	a, b *relaySide
}

// newRelayRig adopts two loopback TCP connections, a and b, on one
// harness (not started). A side's RAW_RX is recorded and its RAW_RX_END
// passes the end on to its partner with CloseWrite, as a proxy does.
func (s *suite) newRelayRig(t *testing.T, info core.Info, halfOpen bool) *relayRig {
	return s.newRelayRigChunk(t, info, halfOpen, 0)
}

// newRelayRigChunk is newRelayRig with the protocol's RxChunk.
func (s *suite) newRelayRigChunk(t *testing.T, info core.Info, halfOpen bool, rxChunk int) *relayRig {
	cb := func(ev core.Event) error {
		if ev.Conn == nil {
			return nil
		}
		sd, _ := ev.Conn.User().(*relaySide)
		if sd == nil {
			return nil
		}
		switch ev.Reason {
		case core.ReasonRawRX:
			sd.rx = append(sd.rx, ev.Data...)
			if to := sd.relayAtRX; to != nil {
				sd.relayAtRX, sd.relayErr = nil, ev.Conn.RelayTo(to.conn)
			}
		case core.ReasonRawRxEnd:
			sd.rxEnd++
			if !sd.partner.closed {
				sd.endErr = sd.partner.conn.CloseWrite()
			}
		case core.ReasonRawClose:
			sd.closed, sd.closeErr = true, ev.Err
		}
		return nil
	}
	info.Protocols = []core.Protocol{{Name: "relay", Callback: cb, AllowHalfOpen: halfOpen, RxChunk: rxChunk}}
	h := s.newHarness(t, info)
	rig := &relayRig{h: h, a: &relaySide{}, b: &relaySide{}}
	rig.a.partner, rig.b.partner = rig.b, rig.a
	for _, sd := range []*relaySide{rig.a, rig.b} {
		srv, cli := tcpPair(t)
		conn, err := h.ctx.AdoptConn(srv, "")
		require.NoError(t, err)
		conn.SetUser(sd)
		sd.conn, sd.peer = conn, cli
	}
	return rig
}

// side returns a copy of sd's loop-owned fields.
func (r *relayRig) side(sd *relaySide) (c relaySide) {
	r.h.do(func() { c = *sd })
	return c
}

// stream is byte i of a test stream: a period that is no power of two,
// so that a byte out of place shows.
func stream(i int) byte { return byte(i*7 + i/65521) }

func streamAt(off, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = stream(off + i)
	}
	return p
}

// checkStream reads n bytes of the test stream from c, from offset off,
// and fails at the first byte out of place.
func checkStream(t *testing.T, c net.Conn, off, n int) {
	t.Helper()
	require.NoError(t, readStream(c, off, n))
}

// readStream is checkStream for any goroutine: it says what was wrong.
func readStream(c net.Conn, off, n int) error {
	if err := c.SetReadDeadline(time.Now().Add(hang)); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for got := 0; got < n; {
		k, err := c.Read(buf[:min(len(buf), n-got)])
		for i := range k {
			if buf[i] != stream(off+got+i) {
				return fmt.Errorf("conformance: relayed byte %d is %#x, want %#x", off+got+i, buf[i], stream(off+got+i))
			}
		}
		got += k
		if err != nil {
			return fmt.Errorf("reading relayed bytes (%d of %d): %w", got, n, err)
		}
	}
	return nil
}

// pipeFDs returns the open pipe descriptors of the process, where /proc
// says (nil elsewhere).
func pipeFDs() map[int]bool {
	fds, ok := procFDs()
	if !ok {
		return nil
	}
	out := map[int]bool{}
	for fd, link := range fds {
		if strings.HasPrefix(link, "pipe:") {
			out[fd] = true
		}
	}
	return out
}

// targetPeerRcvBuf is the SO_RCVBUF of a relay target's peer that is to
// push back soon. Not less: the target's socket keeps its default send
// buffer and sends loopback segments of up to 64 KiB, and a receive buffer
// they do not fit makes the peer's kernel drop them; the target resends
// only when its retransmission timer fires, waiting twice as long after
// each loss in a row, and the stream stalls for seconds. (With 16 KiB,
// 4 × 60 runs of RelayBackpressure and RelaySourceGone on evlib_netpoll
// under -race met 242 such timeouts and 2 hang-guard failures; with 64 KiB,
// none.)
const targetPeerRcvBuf = 64 << 10

// fillBlocked writes the test stream to c from offset off until the
// writes stay blocked while the loop runs, or limit bytes are written,
// and returns how many it wrote. Each look, after the loop ran, waits
// 100 ms for room.
func fillBlocked(t *testing.T, h *harness, c *net.TCPConn, off, limit int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	written := 0
	var werr error
	deadline := time.Now().Add(hang)
	for blocked := false; !blocked && written < limit && werr == nil; {
		// A backend that never pushes back would take minutes to reach
		// a limit meant to be out of reach, a socket buffer per look.
		require.True(t, time.Now().Before(deadline), "conformance: the peer wrote %d bytes in %v without ever staying blocked (hang guard)", written, hang)
		require.NoError(t, rc.Write(func(fd uintptr) bool {
			for written < limit {
				n, err := unix.Write(int(fd), streamAt(off+written, min(64<<10, limit-written)))
				if n > 0 {
					written += n
				}
				if errors.Is(err, unix.EAGAIN) {
					return true
				}
				if err != nil {
					werr = err
					return true
				}
			}
			return true
		}))
		h.sync()
		require.NoError(t, rc.Control(func(fd uintptr) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			n, _ := unix.Poll(pfd, 100)
			blocked = n == 0
		}))
	}
	require.NoError(t, werr)
	return written
}

// Two relays make a bidirectional proxy: 8 MiB each way, written by both
// peers at once, arrive byte-exact with no RAW_RX; each peer's
// half-close then ends its relay after the last byte (RAW_RX_END, whose
// CloseWrite passes the end on), and both connections close. Where the
// relays splice, the core counts splices, and a relay holds a pipe only
// while bytes are in it: a new relay opens none, and once both ended at
// most the two they had stay open, kept by the thread for later relays
// (the suite's leak check sees them closed with the context).
func (s *suite) testRelayBothWays(t *testing.T) {
	const n = 8 << 20
	r := s.newRelayRig(t, core.Info{}, true)
	h, a, b := r.h, r.a, r.b
	pipes := pipeFDs()
	require.NoError(t, a.conn.RelayTo(b.conn))
	require.NoError(t, b.conn.RelayTo(a.conn))
	if pipes != nil {
		require.Equal(t, pipes, pipeFDs(), "pipes open for relays that hold nothing")
	}
	h.start()
	errs := make(chan error, 2)
	for _, sd := range []*relaySide{a, b} {
		go func() {
			c := sd.peer
			c.SetWriteDeadline(time.Now().Add(hang))
			_, err := c.Write(streamAt(0, n))
			if err == nil {
				err = c.CloseWrite()
			}
			errs <- err
		}()
	}
	other := make(chan error, 1)
	go func() { other <- readStream(a.peer, 0, n) }() // from b's peer
	checkStream(t, b.peer, 0, n)
	require.NoError(t, waitCh(t, other, "the other direction"))
	for range 2 {
		require.NoError(t, waitCh(t, errs, "a peer's writes"))
	}
	expectOrderlyEOF(t, a.peer)
	expectOrderlyEOF(t, b.peer)
	for _, sd := range []*relaySide{a, b} {
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, sd.conn))
		if e.err != nil {
			require.ErrorIs(t, e.err, io.EOF, "RAW_CLOSE of a relay's side")
		}
		c := r.side(sd)
		require.Empty(t, c.rx, "RAW_RX on a relay's source")
		require.Equal(t, 1, c.rxEnd, "RAW_RX_END")
		require.NoError(t, c.endErr, "CloseWrite at RAW_RX_END")
	}
	st := h.ctx.Stats()
	require.GreaterOrEqual(t, st.Relayed, uint64(2*n), "Stats.Relayed")
	if s.relaySplices() {
		require.NotZero(t, st.Splices, "Stats.Splices")
		t.Logf("%d splices for %d bytes", st.Splices, st.Relayed)
		if pipes != nil {
			h.sync()
			require.LessOrEqual(t, len(pipeFDs()), len(pipes)+4, "pipes open after the relays ended: more than two relays' worth")
		}
	} else {
		require.Zero(t, st.Splices, "Stats.Splices where relays copy")
	}
	h.rec.verify(t)
}

// A relay's target whose peer does not read pushes back on the source's
// peer, which ends up blocked; once the target's peer reads, every byte
// arrives in order.
func (s *suite) testRelayBackpressure(t *testing.T) {
	if s.desc.Caps&evlib.CapRxBackpressure == 0 {
		t.Skipf("conformance: backend %q declares it lacks evlib.CapRxBackpressure", s.name)
	}
	const limit = 256 << 20
	r := s.newRelayRig(t, core.Info{}, true)
	h, a, b := r.h, r.a, r.b
	require.NoError(t, a.peer.SetWriteBuffer(16<<10))
	require.NoError(t, b.peer.SetReadBuffer(targetPeerRcvBuf))
	require.NoError(t, a.conn.RelayTo(b.conn))
	h.start()
	written := fillBlocked(t, h, a.peer, 0, limit)
	require.Less(t, written, limit, "the source's peer wrote %d bytes through a relay whose target's peer reads nothing, never blocking", written)
	t.Logf("source's peer blocked after %d bytes", written)
	checkStream(t, b.peer, 0, written)
	require.Empty(t, r.side(a).rx, "RAW_RX on a relay's source")
	h.rec.verify(t)
}

// RxFlowControl(false) pauses a relay: nothing reaches the target, and the
// source's peer ends up blocked; after RxFlowControl(true) every byte
// arrives in order, and no RAW_RX came.
func (s *suite) testRelayFlowControl(t *testing.T) {
	r := s.newRelayRig(t, core.Info{}, true)
	h, a, b := r.h, r.a, r.b
	require.NoError(t, a.peer.SetWriteBuffer(16<<10))
	require.NoError(t, a.conn.RelayTo(b.conn))
	require.NoError(t, a.conn.RxFlowControl(false))
	h.start()
	limit := 1 << 20
	if s.desc.Caps&evlib.CapRxBackpressure != 0 {
		limit = 256 << 20
	}
	written := fillBlocked(t, h, a.peer, 0, limit)
	if s.desc.Caps&evlib.CapRxBackpressure != 0 {
		require.Less(t, written, limit, "the peer of a paused relay's source never blocked")
	}
	require.NoError(t, b.peer.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	var one [1]byte
	k, err := b.peer.Read(one[:])
	require.Zero(t, k, "a byte reached the target of a paused relay")
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var paused bool
	h.do(func() { paused = a.conn.RxPaused(); err = a.conn.RxFlowControl(true) })
	require.True(t, paused)
	require.NoError(t, err)
	checkStream(t, b.peer, 0, written)
	// More after the resume, also through the relay.
	write(t, a.peer, streamAt(written, 1<<20))
	checkStream(t, b.peer, written, 1<<20)
	require.Empty(t, r.side(a).rx, "RAW_RX on a relay's source")
	h.rec.verify(t)
}

// Without AllowHalfOpen the source's end of stream, after every byte
// reached the target's peer, closes the source with io.EOF as always; the
// target stays open and takes Write again.
func (s *suite) testRelayEndWithoutHalfOpen(t *testing.T) {
	const n = 1 << 20
	r := s.newRelayRig(t, core.Info{}, false)
	h, a, b := r.h, r.a, r.b
	require.NoError(t, a.conn.RelayTo(b.conn))
	h.start()
	write(t, a.peer, streamAt(0, n))
	require.NoError(t, a.peer.CloseWrite())
	checkStream(t, b.peer, 0, n)
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, a.conn))
	require.ErrorIs(t, e.err, io.EOF)
	var err error
	h.do(func() { err = b.conn.CallbackOnWritable() })
	require.NoError(t, err, "CallbackOnWritable of a relay's target after the relay ended")
	require.False(t, r.side(b).closed)
	require.Empty(t, r.side(a).rx)
	h.rec.verify(t)
}

// The target's end ends the relay and pauses the source, losing nothing
// unseen: the target aborted by the application, or its peer's reset met
// by a relayed write. Bytes the source's peer sends afterwards come, after
// RxFlowControl(true), in RAW_RX.
func (s *suite) testRelayTargetGone(t *testing.T) {
	for _, how := range []string{"Abort", "Close", "PeerReset"} {
		t.Run(how, func(t *testing.T) {
			r := s.newRelayRig(t, core.Info{}, true)
			h, a, b := r.h, r.a, r.b
			require.NoError(t, a.conn.RelayTo(b.conn))
			h.start()
			write(t, a.peer, streamAt(0, 64<<10))
			checkStream(t, b.peer, 0, 64<<10) // the relay holds nothing now
			var err error
			switch how {
			case "Abort":
				h.do(func() { err = b.conn.Abort() })
				require.NoError(t, err)
				e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, b.conn))
				require.ErrorIs(t, e.err, core.ErrAborted)
			case "Close":
				h.do(func() { err = b.conn.Close() })
				require.NoError(t, err)
				h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, b.conn))
			case "PeerReset":
				require.NoError(t, b.peer.SetLinger(0))
				require.NoError(t, b.peer.Close())
				// Until the reset is seen, relayed bytes are dropped with the
				// target: they were never the application's.
				for r.h.rec.count(is(core.ReasonRawClose, b.conn)) == 0 {
					write(t, a.peer, streamAt(0, 4<<10))
					time.Sleep(time.Millisecond)
				}
				e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, b.conn))
				require.Error(t, e.err)
			}
			var paused, closed bool
			h.do(func() { paused, closed = a.conn.RxPaused(), a.conn.Closed() })
			require.True(t, paused, "the source of a relay whose target ended is paused")
			require.False(t, closed)
			post := pattern(61, 32<<10)
			write(t, a.peer, post)
			h.sync()
			require.Empty(t, r.side(a).rx, "RAW_RX while paused")
			h.do(func() { err = a.conn.RxFlowControl(true) })
			require.NoError(t, err)
			waitUntil(t, "RAW_RX of the input after the relay", func() bool {
				c := r.side(a)
				return len(c.rx) >= len(post) && string(c.rx[len(c.rx)-len(post):]) == string(post)
			})
			h.rec.verify(t)
		})
	}
}

// The source's reset closes it with the error, and its Abort with
// ErrAborted, in the middle of a relay whose target is blocked; the
// target stays open, not paused, and takes Write again.
func (s *suite) testRelaySourceGone(t *testing.T) {
	for _, how := range []string{"PeerReset", "Abort"} {
		t.Run(how, func(t *testing.T) {
			r := s.newRelayRig(t, core.Info{}, true)
			h, a, b := r.h, r.a, r.b
			require.NoError(t, b.peer.SetReadBuffer(targetPeerRcvBuf))
			require.NoError(t, a.conn.RelayTo(b.conn))
			h.start()
			fillBlocked(t, h, a.peer, 0, 4<<20) // the relay holds bytes b's peer did not read
			var err error
			switch how {
			case "PeerReset":
				require.NoError(t, a.peer.SetLinger(0))
				require.NoError(t, a.peer.Close())
				// Seen at once where the backend reports a reset while the
				// relay takes no input; elsewhere at the next read, once
				// b's peer made room.
				go io.Copy(io.Discard, b.peer)
				e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, a.conn))
				var op *core.OpError
				require.ErrorAs(t, e.err, &op, "RAW_CLOSE of a reset source")
			case "Abort":
				h.do(func() { err = a.conn.Abort() })
				require.NoError(t, err)
				e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, a.conn))
				require.ErrorIs(t, e.err, core.ErrAborted)
				require.NoError(t, a.peer.SetReadDeadline(time.Now().Add(hang)))
				_, err = io.ReadAll(a.peer)
				require.ErrorIs(t, err, unix.ECONNRESET, "the peer of an aborted source")
			}
			var paused, closed bool
			h.do(func() {
				paused, closed = b.conn.RxPaused(), b.conn.Closed()
				err = b.conn.CallbackOnWritable()
			})
			require.False(t, paused)
			require.False(t, closed)
			require.NoError(t, err, "CallbackOnWritable of the target after its source ended")
			h.rec.verify(t)
		})
	}
}

// A source whose peer sent its input and hung up while the source was
// paused (a proxy that paused its client while it connected upstream)
// relays all the same: the input the core kept reaches the target's peer,
// nothing comes in RAW_RX, and once the source is resumed the relay ends
// as at any source's orderly end: with AllowHalfOpen a RAW_RX_END, in
// which the target's CloseWrite passes the end on (so the relay ended
// before it), else the source's close with io.EOF, the target staying
// open. While the source stays paused the relay does not end. The source
// is a unix socket whose peer closed: a hang-up every backend reports
// to a paused connection, whose input the core then reads and keeps.
// "Answering" relays from a source that stays open after its peer's end
// because a relay to it lasts. A source reset while paused, or whose
// RAW_RX_END came already, has no stream to relay: ErrClosed.
func (s *suite) testRelayEndedSource(t *testing.T) {
	const n = 32 << 10 // within a unix socket's buffers
	for _, halfOpen := range []bool{true, false} {
		name := "HalfOpen"
		if !halfOpen {
			name = "NoHalfOpen"
		}
		t.Run(name, func(t *testing.T) {
			r := s.newRelayRig(t, core.Info{}, halfOpen)
			h, b := r.h, r.b
			fd, peer := nonblockPair(t)
			k, err := unix.Write(peer, streamAt(0, n))
			require.NoError(t, err)
			require.Equal(t, n, k)
			require.NoError(t, unix.Close(peer))
			a := &relaySide{partner: b}
			a.conn, err = h.ctx.AdoptFD(fd, "")
			require.NoError(t, err)
			a.conn.SetUser(a)
			require.NoError(t, a.conn.RxFlowControl(false))
			h.start()
			// Paused and hung up, its input kept: out of the poll set.
			h.rec.waitEvent(t, "DEL_POLL_FD of the paused source after its peer's end", is(core.ReasonDelPollFD, a.conn))
			h.do(func() { err = a.conn.RelayTo(b.conn) })
			require.NoError(t, err, "RelayTo from a paused source whose peer ended in order")
			checkStream(t, b.peer, 0, n)
			h.sync()
			c := r.side(a)
			require.Zero(t, c.rxEnd, "RAW_RX_END of a paused relay's source")
			require.False(t, c.closed, "the paused source of a relay closed")
			var paused bool
			h.do(func() { paused, err = a.conn.RxPaused(), a.conn.RxFlowControl(true) })
			require.True(t, paused)
			require.NoError(t, err)
			if halfOpen {
				h.rec.waitEvent(t, "RAW_RX_END of the source", is(core.ReasonRawRxEnd, a.conn))
				c := r.side(a)
				require.Equal(t, 1, c.rxEnd, "RAW_RX_END")
				require.NoError(t, c.endErr, "the target's CloseWrite at the source's RAW_RX_END: the relay ended before it")
				expectOrderlyEOF(t, b.peer)
			} else {
				e := h.rec.waitEvent(t, "RAW_CLOSE of the source", is(core.ReasonRawClose, a.conn))
				require.ErrorIs(t, e.err, io.EOF)
				h.do(func() { err = b.conn.CallbackOnWritable() })
				require.NoError(t, err, "CallbackOnWritable of the target after the relay ended")
				require.False(t, r.side(b).closed)
			}
			require.Empty(t, r.side(a).rx, "RAW_RX on a relay's source")
			h.rec.verify(t)
		})
	}
	t.Run("InKeptRX", func(t *testing.T) {
		// RelayTo in the RAW_RX of input kept after the end: the
		// rest goes to the target, and RAW_RX_END comes only once
		// the relay ended (its CloseWrite of the target works).
		const chunk = 1 << 10
		r := s.newRelayRigChunk(t, core.Info{}, true, chunk)
		h, b := r.h, r.b
		fd, peer := nonblockPair(t)
		k, err := unix.Write(peer, streamAt(0, n))
		require.NoError(t, err)
		require.Equal(t, n, k)
		require.NoError(t, unix.Close(peer))
		a := &relaySide{partner: b, relayAtRX: b}
		a.conn, err = h.ctx.AdoptFD(fd, "")
		require.NoError(t, err)
		a.conn.SetUser(a)
		require.NoError(t, a.conn.RxFlowControl(false))
		h.start()
		h.rec.waitEvent(t, "DEL_POLL_FD of the paused source after its peer's end", is(core.ReasonDelPollFD, a.conn))
		h.do(func() { err = a.conn.RxFlowControl(true) })
		require.NoError(t, err)
		h.rec.waitEvent(t, "RAW_RX_END of the source", is(core.ReasonRawRxEnd, a.conn))
		c := r.side(a)
		require.NoError(t, c.relayErr, "RelayTo in the RAW_RX of kept input")
		require.Equal(t, streamAt(0, chunk), c.rx, "RAW_RX before RelayTo")
		require.Equal(t, 1, c.rxEnd, "RAW_RX_END")
		require.NoError(t, c.endErr, "the target's CloseWrite at the source's RAW_RX_END: the relay ended before it")
		checkStream(t, b.peer, chunk, n-chunk)
		expectOrderlyEOF(t, b.peer)
		h.rec.verify(t)
	})
	t.Run("Answering", func(t *testing.T) {
		// Without AllowHalfOpen a connection a relay writes to stays
		// open after its peer's end until the relay ends; a relay
		// from it back ends at once, from the loop, and the other
		// direction goes on.
		r := s.newRelayRig(t, core.Info{}, false)
		h, a, b := r.h, r.a, r.b
		require.NoError(t, b.conn.RelayTo(a.conn))
		h.start()
		require.NoError(t, a.peer.CloseWrite())
		h.rec.waitEvent(t, "DEL_POLL_FD of the relay's target after its peer's end", is(core.ReasonDelPollFD, a.conn))
		var err error
		h.do(func() { err = a.conn.RelayTo(b.conn) })
		require.NoError(t, err, "RelayTo from a source answering after its peer's end")
		h.sync()
		h.do(func() { err = b.conn.CallbackOnWritable() })
		require.NoError(t, err, "CallbackOnWritable of the target of a relay from a source that had ended")
		require.False(t, r.side(a).closed)
		write(t, b.peer, streamAt(0, n))
		checkStream(t, a.peer, 0, n)
		require.NoError(t, b.peer.CloseWrite())
		for _, sd := range []*relaySide{b, a} {
			e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, sd.conn))
			require.ErrorIs(t, e.err, io.EOF)
		}
		expectOrderlyEOF(t, a.peer)
		require.Empty(t, r.side(a).rx, "RAW_RX on a relay's source")
		require.Empty(t, r.side(b).rx, "RAW_RX on a relay's source")
		h.rec.verify(t)
	})
	t.Run("Refused", func(t *testing.T) {
		r := s.newRelayRig(t, core.Info{}, true)
		h, a, b := r.h, r.a, r.b
		srv, cli := tcpPair(t)
		c, err := h.ctx.AdoptConn(srv, "")
		require.NoError(t, err)
		require.NoError(t, a.conn.RxFlowControl(false))
		// a's peer resets it while it is paused.
		write(t, a.peer, streamAt(0, 100))
		require.NoError(t, a.peer.SetLinger(0))
		require.NoError(t, a.peer.Close())
		h.start()
		h.rec.waitEvent(t, "DEL_POLL_FD of the reset source", is(core.ReasonDelPollFD, a.conn))
		h.do(func() { err = a.conn.RelayTo(b.conn) })
		require.ErrorIs(t, err, core.ErrClosed, "RelayTo from a source reset while paused")
		// c's end was delivered (RAW_RX_END; c is no relay side, so
		// nothing passes it on).
		require.NoError(t, cli.CloseWrite())
		h.rec.waitEvent(t, "RAW_RX_END of c", is(core.ReasonRawRxEnd, c))
		h.do(func() { err = c.RelayTo(b.conn) })
		require.ErrorIs(t, err, core.ErrClosed, "RelayTo from a source after its RAW_RX_END")
		h.rec.verify(t)
	})
}

// Bad input gets a sentinel and changes nothing.
func (s *suite) testRelayBadInput(t *testing.T) {
	r := s.newRelayRig(t, core.Info{}, true)
	h, a, b := r.h, r.a, r.b
	adopt := func() *core.Conn {
		srv, _ := tcpPair(t)
		c, err := h.ctx.AdoptConn(srv, "")
		require.NoError(t, err)
		return c
	}
	c, d := adopt(), adopt()
	udp, err := h.ctx.ListenUDP("udp4", "127.0.0.1:0", "")
	require.NoError(t, err)

	require.ErrorIs(t, a.conn.RelayTo(nil), core.ErrInvalid, "nil target")
	require.ErrorIs(t, (*core.Conn)(nil).RelayTo(a.conn), core.ErrInvalid, "nil source")
	require.ErrorIs(t, a.conn.RelayTo(a.conn), core.ErrInvalid, "itself")
	require.ErrorIs(t, a.conn.RelayTo(udp), core.ErrInvalid, "a datagram target")
	require.ErrorIs(t, udp.RelayTo(a.conn), core.ErrInvalid, "a datagram source")

	require.NoError(t, d.CloseWrite())
	require.ErrorIs(t, a.conn.RelayTo(d), core.ErrWriteClosed, "a write-closed target")
	require.NoError(t, d.Close())
	require.ErrorIs(t, a.conn.RelayTo(d), core.ErrClosed, "a closed target")
	require.ErrorIs(t, d.RelayTo(a.conn), core.ErrClosed, "a closed source")

	require.NoError(t, a.conn.RelayTo(b.conn))
	require.ErrorIs(t, a.conn.RelayTo(c), core.ErrRelaying, "a source relaying already")
	require.ErrorIs(t, c.RelayTo(b.conn), core.ErrRelaying, "a target relayed to already")
	require.ErrorIs(t, b.conn.CallbackOnWritable(), core.ErrRelaying, "CallbackOnWritable of a target")
	_, err = b.conn.Write([]byte("x"))
	require.ErrorIs(t, err, core.ErrRelaying, "Write of a target")
	require.ErrorIs(t, b.conn.CloseWrite(), core.ErrRelaying, "CloseWrite of a target")
	// The relay still works, and the target can relay back.
	require.NoError(t, b.conn.RelayTo(a.conn))
	h.start()
	write(t, a.peer, streamAt(0, 256<<10))
	checkStream(t, b.peer, 0, 256<<10)
	write(t, b.peer, streamAt(0, 256<<10))
	checkStream(t, a.peer, 0, 256<<10)
	h.rec.verify(t)

	t.Run("NoRoomForPipe", func(t *testing.T) {
		// Two connections fill the thread: no room for a pipe, so
		// the relay copies, byte-exact all the same, and the thread
		// stays within its limit.
		r := s.newRelayRig(t, core.Info{FDLimit: 2}, true)
		pipes := pipeFDs()
		require.NoError(t, r.a.conn.RelayTo(r.b.conn))
		r.h.start()
		write(t, r.a.peer, streamAt(0, 1<<20))
		checkStream(t, r.b.peer, 0, 1<<20)
		// The peer can read the last bytes before the loop counts
		// them: a posted function runs once that step is done.
		r.h.do(func() {})
		st := r.h.ctx.Stats()
		require.Zero(t, st.Splices, "splices with no room for a pipe")
		require.Equal(t, uint64(1<<20), st.Relayed, "Stats.Relayed")
		if pipes != nil {
			require.Equal(t, pipes, pipeFDs(), "pipes open beyond the fd limit")
		}
		require.Empty(t, r.side(r.a).rx, "RAW_RX on a relay's source")
		r.h.rec.verify(t)
	})
	if s.host != nil {
		return // the suite's foreign host drives one thread
	}
	t.Run("OtherThread", func(t *testing.T) {
		h := s.newHarness(t, core.Info{CountThreads: 2, Protocols: []core.Protocol{{Name: "p", Callback: nop}}})
		srv0, _ := tcpPair(t)
		srv1, _ := tcpPair(t)
		c0, err := h.ctx.AdoptConn(srv0, "", core.OnThread(0))
		require.NoError(t, err)
		c1, err := h.ctx.AdoptConn(srv1, "", core.OnThread(1))
		require.NoError(t, err)
		require.ErrorIs(t, c0.RelayTo(c1), core.ErrInvalid)
		require.ErrorIs(t, c1.RelayTo(c0), core.ErrInvalid)
	})
}
