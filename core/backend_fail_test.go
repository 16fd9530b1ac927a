//go:build unix

package core_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// waitFails makes the waits of every "fail-wait" backend fail while set.
var waitFails atomic.Bool

var errWaitBroke = errors.New("the wait broke")

// failingWait is the poll backend with a wait that fails on demand.
type failingWait struct{ evlib.Backend }

func (f failingWait) Poll(d time.Duration) (int, error) {
	if waitFails.Load() {
		return 0, errWaitBroke
	}
	return f.Backend.Poll(d)
}

// useFailingWait registers "fail-wait" and clears waitFails when the
// test ends.
func useFailingWait(t *testing.T) {
	t.Helper()
	registerWrappedPoll(t, "fail-wait", func(b evlib.Backend) evlib.Backend { return failingWait{b} })
	t.Cleanup(func() { waitFails.Store(false) })
}

// Service returns a failed wait as an error wrapping ErrBackend and the
// backend's own, after the rest of its pass: a timer due ran. The thread
// goes on once the backend does.
func TestServiceReturnsFailedWait(t *testing.T) {
	useFailingWait(t)
	ctx, err := core.New(core.Info{EventLib: "fail-wait", Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	th := ctx.Thread(0)
	require.NoError(t, th.Service(0))

	fired := false
	_, err = th.AfterFunc(0, func() { fired = true })
	require.NoError(t, err)
	waitFails.Store(true)
	err = th.Service(time.Second)
	require.ErrorIs(t, err, core.ErrBackend)
	require.ErrorIs(t, err, errWaitBroke)
	require.True(t, fired, "the timer due ran in the pass whose wait failed")

	waitFails.Store(false)
	require.NoError(t, th.Service(0))
}

// Run ends when a thread's wait fails, with that error, once it stopped
// the other threads, instead of polling the broken backend again at full
// speed; the context stays usable, and Run serves it again.
func TestRunEndsOnFailedWait(t *testing.T) {
	useFailingWait(t)
	ctx, err := core.New(core.Info{EventLib: "fail-wait", CountThreads: 2,
		Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	for range 2 {
		done := make(chan error, 1)
		go func() { done <- ctx.Run(context.Background()) }()
		ran := make(chan struct{})
		require.NoError(t, ctx.Thread(1).Post(func() { close(ran) }))
		<-ran
		waitFails.Store(true)
		require.NoError(t, ctx.Thread(1).CancelService())
		err := <-done
		require.ErrorIs(t, err, core.ErrBackend)
		require.ErrorIs(t, err, errWaitBroke)
		waitFails.Store(false)
	}
	// Run left no thread held: Destroy, with nobody servicing, finishes
	// the teardown itself.
	require.NoError(t, ctx.Destroy())
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Destroy did not finish: a thread is still held")
	}
}
