//go:build unix

package core_test

import (
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
)

// A client connection still connecting is not closed: SetTimeout, SetTimer
// and RxFlowControl answer as its output calls do (ErrInvalid, from
// RAW_ADOPT on), where they said ErrClosed while Closed reported false.
func TestConnectingIsNotClosed(t *testing.T) {
	ctx, err := core.New(core.Info{EventLib: "epoll", Protocols: []core.Protocol{{Name: "p", Callback: nop}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	c, err := ctx.Connect("tcp", ln.Addr().String(), "")
	require.NoError(t, err)
	require.True(t, c.Connecting())
	for name, err := range map[string]error{
		"SetTimeout":    c.SetTimeout(time.Second),
		"SetTimer":      c.SetTimer(time.Second),
		"RxFlowControl": c.RxFlowControl(false),
	} {
		require.ErrorIs(t, err, core.ErrInvalid, name)
		require.NotErrorIs(t, err, core.ErrClosed, name)
	}
	require.False(t, c.Closed())
	require.True(t, c.Connecting())
}
