package core_test

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A listening socket shut down behind the core's back is reported ready
// (a hang-up, whatever the interest) and accept(2) fails with EINVAL at
// every try: the core closes the listener instead of failing, and logging,
// at every pass from then on.
func TestListenerShutDownBehindTheCore(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var log bytes.Buffer
			ctx, err := core.New(core.Info{EventLib: lib, Logger: slog.New(slog.NewTextHandler(&log, nil)),
				Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "p")
			require.NoError(t, err)
			require.NoError(t, unix.Shutdown(ln.FD(), unix.SHUT_RD))
			th := ctx.Thread(0)
			for range 4 {
				require.NoError(t, th.Service(0))
			}
			require.Equal(t, uint64(1), th.Stats().Accepts, "accept(2) calls")
			require.ErrorIs(t, ln.Close(), core.ErrClosed, "the listener was closed")
			require.Contains(t, log.String(), "listener closed")
		})
	}
}
