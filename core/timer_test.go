//go:build unix

package core_test

import (
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
)

// A stopped timer never fires, whatever its place among the pending ones:
// in particular the earliest (the heap's root), which the loop's next wait
// is computed from. The same for Conn.CancelTimer.
func TestStopEarliestTimer(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var timerFired bool
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{
				Name: "t",
				Callback: func(ev core.Event) error {
					if ev.Reason == core.ReasonTimer {
						timerFired = true
					}
					return nil
				},
			}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			th := ctx.Thread(0)

			for _, others := range []int{0, 1, 5} {
				var fired, done bool
				for i := range others {
					_, err := th.AfterFunc(time.Hour+time.Duration(i), func() {})
					require.NoError(t, err)
				}
				tm, err := th.AfterFunc(time.Millisecond, func() { fired = true })
				require.NoError(t, err)
				was, err := tm.Stop()
				require.NoError(t, err)
				require.True(t, was, "Stop of a pending timer")
				_, err = th.AfterFunc(20*time.Millisecond, func() { done = true })
				require.NoError(t, err)
				serviceUntil(t, ctx, func() bool { return done })
				require.False(t, fired, "the stopped earliest timer fired (%d later timers pending)", others)
				was, err = tm.Stop()
				require.NoError(t, err)
				require.False(t, was, "Stop of a stopped timer")
			}

			fd, peer := socketPair(t)
			defer peer.Close()
			c, err := ctx.AdoptFD(fd, "")
			require.NoError(t, err)
			require.NoError(t, c.SetTimer(time.Millisecond))
			require.NoError(t, c.CancelTimer())
			var done bool
			_, err = th.AfterFunc(20*time.Millisecond, func() { done = true })
			require.NoError(t, err)
			serviceUntil(t, ctx, func() bool { return done })
			require.False(t, timerFired, "a cancelled TIMER fired")
		})
	}
}
