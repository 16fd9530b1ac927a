package core_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/stretchr/testify/require"
)

// Info.ConnectTimeout fails a connection that is not established in time
// with CLIENT_CONNECTION_ERROR and ErrTimeout, at exactly that long after
// Connect. The peer is a listener whose accept queue is full, which Linux
// answers by dropping the SYN (elsewhere a reset may come at once), so the
// connect hangs.
func TestSimConnectTimeout(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(loopListeners(t, at{1, true}))

	clk := simloop.NewClock()
	var failed []closing
	s := newSim(t, clk, core.Info{ConnectTimeout: 2 * time.Second, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonClientConnectionError {
			failed = append(failed, closing{clk.Now(), ev.Err})
		}
		return nil
	}}}})
	c, err := s.th.Context().Connect("tcp", addr, "")
	require.NoError(t, err)
	s.runTo(2*time.Second - 1)
	require.True(t, c.Connecting())
	s.runTo(time.Hour)
	require.Len(t, failed, 1)
	require.Equal(t, 2*time.Second, failed[0].at)
	require.ErrorIs(t, failed[0].err, core.ErrTimeout)
}
