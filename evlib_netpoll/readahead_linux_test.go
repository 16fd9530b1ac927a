//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A core that falls more than MaxReadAhead behind netpoll with rx on (its
// RAW_RX callback held the thread while netpoll went on reading) gets the
// stream taken out of netpoll's poller, so netpoll's buffer stops growing
// and the kernel pushes back on the peer; every byte still arrives, in
// order.
func TestReadAheadBound(t *testing.T) { readAheadBound(t, false) }

// The same with the core's own write blocked all the while (the peer does
// not read until the end): going back to netpoll must leave the helper
// that waits for writability its descriptor, and the reply all arrives.
func TestReadAheadBoundWriteBlocked(t *testing.T) { readAheadBound(t, true) }

func readAheadBound(t *testing.T, reply bool) {
	noLeaks(t)
	const total = 8 << 20
	wantReply := make([]byte, total)
	for i := range wantReply {
		wantReply[i] = byte(i * 5)
	}
	replyBuf := bytes.Clone(wantReply) // loop only
	closed := make(chan error, 1)
	release := make(chan struct{})
	var got []byte // loop only
	first := true
	ctx, addr := running(t, evlib_netpoll.Name, func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawAdopt:
			// The kernel holds little: what the peer wrote is mostly
			// in netpoll's buffer.
			return unix.SetsockoptInt(ev.Conn.FD(), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10)
		case core.ReasonRawRX:
			got = append(got, ev.Data...)
			if first {
				first = false
				if reply {
					return ev.Conn.CallbackOnWritable()
				}
				<-release
			}
		case core.ReasonRawWriteable:
			if b := replyBuf; b != nil && reply {
				replyBuf = nil
				// Far more than the sockets take: it blocks.
				_, err := ev.Conn.Write(b)
				<-release
				return err
			}
		case core.ReasonRawClose:
			closed <- ev.Err
		}
		return nil
	})
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.(*net.TCPConn).SetWriteBuffer(16<<10))

	sent := make([]byte, total)
	for i := range sent {
		sent[i] = byte(i * 11)
	}
	before := evlib_netpoll.Detaches()
	// The whole write completes while the first RAW_RX holds the thread:
	// netpoll reads it all into its buffer meanwhile.
	_, err = c.Write(sent)
	if err != nil {
		select {
		case cerr := <-closed:
			t.Logf("RAW_CLOSE: %v", cerr)
		default:
		}
	}
	require.NoError(t, err)
	close(release)
	waitUntil(t, "netpoll held far more than MaxReadAhead, yet the stream was never taken out of its poller", func() bool {
		return evlib_netpoll.Detaches() > before
	})
	waitUntil(t, "not every byte arrived", func() bool {
		n := 0
		onLoop(t, ctx, func() { n = len(got) })
		return n >= total
	})
	var same bool
	onLoop(t, ctx, func() { same = bytes.Equal(sent, got) })
	require.True(t, same, "bytes delivered out of order or altered")
	if reply {
		back := make([]byte, total)
		_, err := io.ReadFull(c, back)
		require.NoError(t, err, "the reply did not all arrive")
		require.True(t, bytes.Equal(wantReply, back), "reply altered")
	}
	select {
	case err := <-closed:
		t.Fatalf("the connection closed early: %v", err)
	default:
	}
}
