//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
)

// Read gives netpoll back what the core took at its next read, so that
// small messages do not make netpoll take a fresh node for each one (see
// entry.bigNodes). Every message still comes back whole and in order:
// small ones, some straddling two of netpoll's 8 KiB nodes, then a burst
// of which netpoll holds more than a page (reads release at once from
// then on), then small ones again.
func TestReleaseAcrossNodes(t *testing.T) {
	noLeaks(t)
	var out []byte // loop only
	pause := make(chan struct{}, 1)
	_, addr := running(t, evlib_netpoll.Name, func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawRX:
			select {
			case <-pause:
				// Hold the thread while the burst arrives: netpoll reads
				// it into its buffer meanwhile.
				time.Sleep(100 * time.Millisecond)
			default:
			}
			out = append(out, ev.Data...)
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			n, err := ev.Conn.Write(out)
			out = out[n:]
			if err == nil && len(out) > 0 {
				err = ev.Conn.CallbackOnWritable()
			}
			return err
		}
		return nil
	})
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))

	seq := 0
	roundTrip := func(size int) {
		t.Helper()
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(seq + i*3)
		}
		seq++
		_, err := c.Write(msg)
		require.NoError(t, err)
		got := make([]byte, size)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(msg, got), "message %d (%d bytes) came back changed", seq, size)
	}
	for range 1000 { // 100 KB over a dozen nodes, a message straddling two now and then
		roundTrip(100)
	}
	before := evlib_netpoll.BigNodeStreams()
	// netpoll reads on its own goroutines: a burst whose first bytes hold
	// the thread leaves it far ahead of the core, though how far is up to
	// the scheduler; another burst follows until it was more than a page.
	for try := 0; evlib_netpoll.BigNodeStreams() == before; try++ {
		require.Less(t, try, 20, "netpoll never held more than a page for the stream")
		pause <- struct{}{}
		roundTrip(256 << 10)
	}
	for range 1000 {
		roundTrip(100)
	}
}
