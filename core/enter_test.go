//go:build unix && (race || ((amd64 || arm64) && !purego))

// Where the core tells goroutines apart (see exactOwner), Run waits for
// another goroutine's loop-only call.

package core_test

import (
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
)

// TestRunWaitsForCall: a Run started while another goroutine's loop-only
// call holds the thread (a set-up call beside `go ctx.Run(...)`) waits for
// that call and then serves, instead of returning ErrInService to nobody.
func TestRunWaitsForCall(t *testing.T) {
	inAdopt, release := make(chan struct{}), make(chan struct{})
	var ctx *core.Context
	var inside []error
	p := echo.Protocol("echo")
	serve := p.Callback
	p.Callback = func(ev core.Event) error {
		if ev.Reason == core.ReasonRawAdopt {
			// Inside the call the thread is the caller's: not waited for.
			inside = []error{ctx.Thread(0).Service(0), ctx.Run(t.Context())}
			close(inAdopt)
			<-release // the call holds the thread meanwhile
		}
		return serve(ev)
	}
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{p}})
	require.NoError(t, err)
	t.Cleanup(func() { ctx.Destroy() })
	waiting := make(chan struct{})
	core.OnEnterWaits(t, func() { close(waiting) })

	srv, cli := testkit.TCPPair(t)

	adopted := make(chan error, 1)
	go func() {
		_, err := ctx.AdoptConn(srv, "echo")
		adopted <- err
	}()
	<-inAdopt
	for _, err := range inside {
		require.ErrorIs(t, err, core.ErrInService, "Service and Run inside a callback of the call")
	}
	ran := make(chan error, 1)
	go func() { ran <- ctx.Run(t.Context()) }()
	select {
	case <-waiting:
	case err := <-ran:
		t.Fatalf("Run returned %v while a call held the thread", err)
	}
	close(release)
	require.NoError(t, <-adopted)

	require.NoError(t, cli.SetDeadline(time.Now().Add(10*time.Second))) // a hang guard
	_, err = cli.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = cli.Read(buf)
	require.NoError(t, err, "Run serves once the call is done")
	require.Equal(t, "ping", string(buf))
	require.NoError(t, ctx.Destroy())
	require.NoError(t, <-ran)
}

// TestSecondRunInService: a thread another goroutine services is not
// waited for.
func TestSecondRunInService(t *testing.T) {
	started := make(chan struct{}, 1)
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	t.Cleanup(func() { ctx.Destroy() })
	ran := make(chan error, 1)
	require.NoError(t, ctx.Thread(0).Post(func() { started <- struct{}{} }))
	go func() { ran <- ctx.Run(t.Context()) }()
	<-started
	require.ErrorIs(t, ctx.Run(t.Context()), core.ErrInService)
	require.ErrorIs(t, ctx.Thread(0).Service(0), core.ErrInService)
	require.NoError(t, ctx.Destroy())
	require.NoError(t, <-ran)
}
