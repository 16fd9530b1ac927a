//go:build unix

package core_test

import (
	"io"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
)

// A connection that a timer closes at the start of a pass — its timeout,
// idle timeout or an AfterFunc's Close fell due while the loop was busy —
// is closed before the loop waits again: its peer sees the end of stream
// while the loop sleeps, not after the thread's next event. (The close(2)
// was left to the end of the next batch, and an idle server has none.)
func TestTimerCloseReachesPeerBeforeWait(t *testing.T) {
	cases := []struct {
		name  string
		info  core.Info
		adopt func(c *core.Conn) error
	}{
		{"SetTimeout", core.Info{}, func(c *core.Conn) error { return c.SetTimeout(time.Nanosecond) }},
		{"IdleTimeout", core.Info{IdleTimeout: time.Nanosecond}, func(*core.Conn) error { return nil }},
		{"AfterFuncClose", core.Info{}, func(c *core.Conn) error {
			_, err := c.Thread().AfterFunc(0, func() { c.Close() })
			return err
		}},
	}
	for _, lib := range backends {
		for _, tc := range cases {
			t.Run(lib+"/"+tc.name, func(t *testing.T) {
				info := tc.info
				info.EventLib = lib
				info.Protocols = []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
					if ev.Reason == core.ReasonRawAdopt {
						return tc.adopt(ev.Conn)
					}
					return nil
				}}}
				ctx, err := core.New(info)
				require.NoError(t, err)
				srv, cli := testkit.TCPPair(t)
				_, err = ctx.AdoptConn(srv, "p")
				require.NoError(t, err)
				// The timer is due before the first pass begins, so that
				// pass fires it and then waits with nothing to wake it.
				done := make(chan error, 1)
				go func() {
					var err error
					for err == nil {
						err = ctx.Thread(0).Service(-1)
					}
					done <- err
				}()
				require.NoError(t, cli.SetReadDeadline(time.Now().Add(10*time.Second)))
				n, err := cli.Read(make([]byte, 1))
				require.Zero(t, n)
				require.ErrorIs(t, err, io.EOF, "the peer sees the close while the loop waits")
				require.NoError(t, ctx.Destroy())
				<-ctx.Done()
				require.ErrorIs(t, <-done, core.ErrDestroyed)
			})
		}
	}
}
