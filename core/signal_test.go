//go:build unix

package core_test

import (
	"context"
	"syscall"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
)

// With HandleSignals, SIGTERM while Run runs is an orderly destroy.
func TestHandleSignals(t *testing.T) {
	closed := make(chan error, 4)
	ctx, err := core.New(core.Info{HandleSignals: true, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawClose {
			closed <- ev.Err
		}
		return nil
	}}}})
	require.NoError(t, err)
	_, err = ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	running := make(chan struct{})
	require.NoError(t, ctx.Thread(0).Post(func() { close(running) })) // Run has installed its handler
	<-running
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGTERM))
	require.NoError(t, <-done)
	<-ctx.Done()
}
