//go:build unix

package conformance

import (
	"bytes"
	"fmt"
	"net"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
)

// readbufRig is a connection adopted with core.WithReadbuf whose RAW_RX
// records every byte and can pause inside a given RAW_RX.
type readbufRig struct {
	h    *harness
	conn *core.Conn
	peer net.Conn
	// st is touched only on the loop goroutine.
	st struct {
		got          []byte
		calls        int
		pauseAt      int // pause inside this RAW_RX (1-based), 0: never
		paused       chan struct{}
		pauseOnAdopt bool
		want         int
		reached      chan struct{}
		oversize     int
		errs         []error
	}
}

const readbufChunk = 16

func (s *suite) newReadbufRig(t *testing.T) *readbufRig {
	r := &readbufRig{}
	cb := func(ev core.Event) error {
		st := &r.st
		switch ev.Reason {
		case core.ReasonRawAdopt:
			if st.pauseOnAdopt {
				return ev.Conn.RxFlowControl(false)
			}
		case core.ReasonRawRX:
			st.got = append(st.got, ev.Data...)
			st.calls++
			if len(ev.Data) > readbufChunk {
				st.oversize++
			}
			if st.pauseAt > 0 && st.calls == st.pauseAt {
				st.pauseAt = 0
				if err := ev.Conn.RxFlowControl(false); err != nil {
					st.errs = append(st.errs, err)
				}
				close(st.paused)
			}
			if st.want > 0 && len(st.got) >= st.want {
				st.want = 0
				close(st.reached)
			}
		}
		return nil
	}
	r.h = s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "readbuf", Callback: cb, RxChunk: readbufChunk}}})
	return r
}

// received returns how many bytes RAW_RX delivered so far, and whether
// they are the first bytes of want.
func (r *readbufRig) received(want []byte) (int, bool) {
	var n int
	var prefix bool
	r.h.do(func() { n, prefix = len(r.st.got), bytes.HasPrefix(want, r.st.got) })
	return n, prefix
}

// pauseIn arranges a pause inside the RAW_RX k calls from now and returns
// the channel closed then.
func (r *readbufRig) pauseIn(k int) chan struct{} {
	ch := make(chan struct{})
	r.h.do(func() { r.st.pauseAt, r.st.paused = r.st.calls+k, ch })
	return ch
}

// resumeUntil resumes rx and waits until total bytes arrived.
func (r *readbufRig) resumeUntil(t *testing.T, total int) {
	t.Helper()
	ch := make(chan struct{})
	var err error
	r.h.do(func() {
		r.st.want, r.st.reached = total, ch
		err = r.conn.RxFlowControl(true)
	})
	require.NoError(t, err)
	waitCh(t, ch, fmt.Sprintf("%d bytes after resume", total))
}

// finish checks that exactly want arrived, in order, in RxChunk pieces.
func (r *readbufRig) finish(t *testing.T, want []byte) {
	t.Helper()
	h := r.h
	h.sync()
	var got []byte
	var errs []error
	var oversize int
	h.do(func() { got, errs, oversize = r.st.got, r.st.errs, r.st.oversize })
	require.Empty(t, errs)
	require.Zero(t, oversize, "RAW_RX carried more than Protocol.RxChunk bytes")
	require.Equal(t, len(want), len(got), "bytes delivered")
	if i := firstDiff(want, got); i >= 0 {
		t.Fatalf("conformance: bytes delivered out of order, duplicated or altered: first difference at offset %d of %d (the bytes handed over with WithReadbuf are the first %d)", i, len(want), len(readbufData))
	}
	h.rec.verify(t)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// readbufData is what the tests hand over with core.WithReadbuf: bytes
// the application read from the socket before it was adopted.
var readbufData = pattern(61, 300)

// Checklist 12 with lws_adopt_socket_readbuf: the bytes handed over with
// core.WithReadbuf reach RAW_RX first, before what the socket holds,
// without waiting for a network event, and every byte arrives exactly once
// and in order across pauses and resumes (RxFlowControl):
//
//   - KernelInputFirst: the socket already holds input when it is adopted
//     before the loop runs, so the first wait finds it readable while the
//     handed-over bytes are still kept (on a backend that reports it in
//     the first pass' wait, before the core's forced service);
//   - PausesWhileDelivering: adopted on the running loop with nothing in
//     the socket; RAW_RX pauses twice while the kept bytes are being
//     delivered, input arrives while paused, and a resume undone in the
//     same callback, before the loop could deliver, delivers nothing;
//   - PausedAtAdopt: paused in RAW_ADOPT, with input in the socket and
//     more arriving: nothing until resumed, then all of it, in order.
//
// On a buffered-rx backend (evlib.CapBufferedRx) the socket's input comes
// through the backend's buffer; the order must be the same.
func (s *suite) testReadbufOrder(t *testing.T) {
	r1, k1, k2, k3 := readbufData, pattern(62, 500), pattern(63, 700), pattern(64, 400)
	t.Run("KernelInputFirst", func(t *testing.T) {
		r := s.newReadbufRig(t)
		fd, peer := unixPair(t)
		write(t, peer, k1)
		var err error
		r.conn, err = r.h.ctx.AdoptFD(fd, "", core.WithReadbuf(r1))
		require.NoError(t, err)
		r.peer = peer
		ch := make(chan struct{})
		r.st.want, r.st.reached = len(r1)+len(k1), ch
		// One pass first, on this goroutine: where the backend (or the
		// application's loop) reports the socket in the wait of that pass,
		// it comes before the forced service that delivers the kept
		// bytes, which must still go first.
		require.NoError(t, r.h.service(0))
		r.h.start()
		waitCh(t, ch, "the handed-over bytes and the socket's input")
		ch = make(chan struct{})
		r.h.do(func() { r.st.want, r.st.reached = len(r1)+len(k1)+len(k2), ch })
		write(t, peer, k2)
		waitCh(t, ch, "input written after the first")
		r.finish(t, bytes.Join([][]byte{r1, k1, k2}, nil))
	})
	t.Run("PausesWhileDelivering", func(t *testing.T) {
		r := s.newReadbufRig(t)
		want := bytes.Join([][]byte{r1, k1, k2, k3}, nil)
		r.h.start()
		fd, peer := unixPair(t)
		r.peer = peer
		paused := r.pauseIn(3)
		var err error
		r.h.do(func() { r.conn, err = r.h.ctx.AdoptFD(fd, "", core.WithReadbuf(r1)) })
		require.NoError(t, err)
		// No network event: the handed-over bytes come on their own.
		waitCh(t, paused, "the third RAW_RX of the handed-over bytes")
		write(t, peer, k1)
		r.h.sync()
		n, ok := r.received(want)
		require.Equal(t, 3*readbufChunk, n, "RAW_RX after RxFlowControl(false) inside RAW_RX")
		require.True(t, ok, "bytes delivered out of order before the first pause")

		// Resume: the kept bytes again, and a pause among them.
		paused = r.pauseIn(4)
		r.h.do(func() { err = r.conn.RxFlowControl(true) })
		require.NoError(t, err)
		waitCh(t, paused, "RAW_RX to pause in again")
		write(t, peer, k2)
		r.h.sync()
		n, ok = r.received(want)
		require.Equal(t, 7*readbufChunk, n, "RAW_RX after the second pause")
		require.True(t, ok, "bytes delivered out of order before the second pause")

		// A resume undone before the loop could act on it.
		r.h.do(func() {
			if err = r.conn.RxFlowControl(true); err == nil {
				err = r.conn.RxFlowControl(false)
			}
		})
		require.NoError(t, err)
		write(t, peer, k3)
		r.h.sync()
		n, _ = r.received(want)
		require.Equal(t, 7*readbufChunk, n, "RAW_RX while paused (resumed and paused again in one callback)")

		r.resumeUntil(t, len(want))
		r.finish(t, want)
	})
	t.Run("PausedAtAdopt", func(t *testing.T) {
		r := s.newReadbufRig(t)
		want := bytes.Join([][]byte{r1, k1, k2}, nil)
		fd, peer := unixPair(t)
		r.peer = peer
		write(t, peer, k1)
		r.st.pauseOnAdopt = true
		var err error
		r.conn, err = r.h.ctx.AdoptFD(fd, "", core.WithReadbuf(r1))
		require.NoError(t, err)
		r.h.start()
		r.h.sync()
		write(t, peer, k2)
		r.h.sync()
		n, _ := r.received(want)
		require.Zero(t, n, "RAW_RX while paused since RAW_ADOPT")
		r.resumeUntil(t, len(want))
		r.finish(t, want)
	})
}
