//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"net"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
)

// In Loop a pass a reader runs (inline, while the service goroutine waits)
// counts the wait that follows it: a function posted to the core may have
// run in that pass, and whoever waits for the loop to be idle again looks
// for a wait counted after it. The service goroutine's own wait, counted
// before the pass, does not do.
func TestInlinePassCountsTheWaitAfterIt(t *testing.T) {
	rx := make(chan uint64, 16)
	ctx, addr := running(t, evlib_netpoll.Name, func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRX {
			rx <- ev.Conn.Thread().Stats().Waits
		}
		return nil
	})
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	for range 3 {
		_, err = c.Write([]byte("x"))
		require.NoError(t, err)
		w := <-rx
		waitUntil(t, "no wait counted after the pass that ran RAW_RX", func() bool { return ctx.Stats().Waits > w })
	}
}
