//go:build unix && (race || ((amd64 || arm64) && !purego))

// Where the core checks the calling goroutine of every loop-only call (see
// ErrWrongGoroutine); elsewhere this test would itself race.

package core_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
)

// TestLastHolderDoesNotPassForTheNext: a goroutine that held the thread
// for a loop-only call must not pass for the holder once another goroutine
// took the thread (Service here): it is refused, and the race detector sees
// any call that runs beside Service.
func TestLastHolderDoesNotPassForTheNext(t *testing.T) {
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	th := ctx.Thread(0)
	done := make(chan error, 1)
	go func() {
		for range 20_000 {
			tm, err := th.AfterFunc(time.Hour, func() {})
			switch {
			case err == nil:
				tm.Stop() // this goroutine held the thread last
			case !errors.Is(err, core.ErrWrongGoroutine):
				done <- err
				return
			}
		}
		done <- nil
	}()
	for {
		select {
		case err := <-done:
			require.NoError(t, err)
			return
		default:
			if err := th.Service(0); err != nil {
				require.ErrorIs(t, err, core.ErrInService) // the other goroutine holds it
			}
		}
	}
}

// TestRunThreadsOwnedByTheirGoroutines: Run takes every thread on the
// calling goroutine before it hands threads 1..N to goroutines of their
// own; thread 0's callbacks, on that calling goroutine, must not pass for
// thread 1's owner meanwhile. (GOMAXPROCS 1 makes thread 0's first pass
// come before thread 1's goroutine starts.)
func TestRunThreadsOwnedByTheirGoroutines(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ctx, err := core.New(core.Info{CountThreads: 2, Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	got := make(chan error, 1)
	require.NoError(t, ctx.Thread(0).Post(func() {
		_, err := ctx.Thread(1).AfterFunc(time.Hour, func() {})
		got <- err
	}))
	ran := make(chan error, 1)
	go func() { ran <- ctx.Run(context.Background()) }()
	err = <-got
	require.NoError(t, ctx.Destroy())
	require.NoError(t, <-ran)
	require.ErrorIs(t, err, core.ErrWrongGoroutine, "thread 1's AfterFunc from a callback of thread 0")
}

// TestLoopOnlyCallsAfterDestroy: once Destroy was called, a loop-only call
// from a goroutine that does not hold the thread says ErrDestroyed, as
// Destroy's doc promises for adopting and listening and Timer.Stop's for
// itself, also while the teardown waits for the callback the servicing
// goroutine is in (they said ErrWrongGoroutine until the teardown was
// done, while AdoptFD and Connect said ErrDestroyed).
func TestLoopOnlyCallsAfterDestroy(t *testing.T) {
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	th := ctx.Thread(0)
	tm, err := th.AfterFunc(time.Hour, func() {})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	in, out := make(chan struct{}), make(chan struct{})
	require.NoError(t, th.Post(func() { close(in); <-out }))
	ran := make(chan error, 1)
	go func() { ran <- ctx.Run(context.Background()) }()
	<-in // the loop is in a callback, on its own goroutine
	require.NoError(t, ctx.Destroy())

	_, err = ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.ErrorIs(t, err, core.ErrDestroyed, "Listen")
	_, err = tm.Stop()
	require.ErrorIs(t, err, core.ErrDestroyed, "Timer.Stop")
	require.ErrorIs(t, tm.Reset(time.Second), core.ErrDestroyed, "Timer.Reset")
	_, err = th.AfterFunc(time.Second, func() {})
	require.ErrorIs(t, err, core.ErrDestroyed, "AfterFunc")
	require.ErrorIs(t, ln.Close(), core.ErrDestroyed, "Listener.Close")
	require.ErrorIs(t, ctx.SystemTransition(core.SystemOperational), core.ErrDestroyed, "SystemTransition")

	close(out)
	require.NoError(t, <-ran)
	<-ctx.Done()
}
