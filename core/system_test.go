//go:build unix

package core_test

import (
	"fmt"
	"io"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func nop(core.Event) error { return nil }

func TestSystemReachesOperational(t *testing.T) {
	var steps []core.SystemState
	ctx, err := core.New(core.Info{
		Protocols: []core.Protocol{{Name: "p", Callback: nop}},
		Notifiers: []core.Notifier{{Name: "log", Notify: func(_ *core.Context, cur, next core.SystemState) bool {
			steps = append(steps, next)
			return true
		}}},
	})
	require.NoError(t, err)
	require.Equal(t, core.SystemOperational, ctx.SystemState())
	require.Len(t, steps, int(core.SystemOperational), "every step is announced")
	require.NoError(t, ctx.Destroy())
	require.Equal(t, core.SystemContextDestroying, ctx.SystemState())
	require.Equal(t, core.SystemContextDestroying, steps[len(steps)-1])
}

// A notifier holds the system before TIME_VALID until its asynchronous work
// is done; functions attached from other goroutines wait for OPERATIONAL and
// then run once each, in order, on the service goroutine.
func TestNotifierHoldsAndAttach(t *testing.T) {
	timeKnown := false
	ctx, err := core.New(core.Info{
		Protocols: []core.Protocol{{Name: "p", Callback: nop}},
		Notifiers: []core.Notifier{{Name: "ntp", Notify: func(_ *core.Context, cur, next core.SystemState) bool {
			return next != core.SystemTimeValid || timeKnown
		}}},
	})
	require.NoError(t, err)
	defer ctx.Destroy()
	require.Equal(t, core.SystemCPDPreTime, ctx.SystemState(), "held before TIME_VALID")

	var ran []int
	booked := make(chan struct{})
	for i := range 3 {
		go func() { // the booking goroutine is gone long before fn runs
			assert.NoError(t, ctx.Attach(0, core.SystemOperational, func() { ran = append(ran, i) }))
			booked <- struct{}{}
		}()
		<-booked
	}
	th := ctx.Thread(0)
	for range 3 {
		require.NoError(t, th.Service(0))
	}
	require.Empty(t, ran, "not before OPERATIONAL")

	go func() { // the asynchronous work completes elsewhere and reports back
		th.Post(func() {
			timeKnown = true
			require.NoError(t, ctx.SystemTransition(core.SystemOperational))
		})
	}()
	serviceUntil(t, ctx, func() bool { return len(ran) == 3 })
	require.Equal(t, []int{0, 1, 2}, ran)
	require.Equal(t, core.SystemOperational, ctx.SystemState())
	for range 3 {
		require.NoError(t, th.Service(0))
	}
	require.Len(t, ran, 3, "exactly once")

	require.NoError(t, ctx.Destroy())
	require.ErrorIs(t, ctx.Attach(0, core.SystemOperational, func() {}), core.ErrDestroyed)
}

func TestPolicyInvalidCycle(t *testing.T) {
	var seen []core.SystemState
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: nop}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	require.NoError(t, ctx.RegisterNotifier(core.Notifier{Name: "n", Notify: func(_ *core.Context, _, next core.SystemState) bool {
		seen = append(seen, next)
		return true
	}}))
	require.NoError(t, ctx.SystemTransition(core.SystemPolicyInvalid))
	require.Equal(t, core.SystemPolicyInvalid, ctx.SystemState())
	require.NoError(t, ctx.SystemTransition(core.SystemOperational))
	require.Equal(t, core.SystemOperational, ctx.SystemState())
	require.Equal(t, core.SystemPolicyInvalid, seen[0])
	require.Equal(t, core.SystemInitialized, seen[1], "back up from INITIALIZED")
}

func TestBlobs(t *testing.T) {
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: nop}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	b := ctx.Blob(core.BlobDeviceSerial, 0)
	require.Same(t, b, ctx.Blob(core.BlobDeviceSerial, 0))
	b.SetDirect([]byte("SN-0042"))
	require.Equal(t, 7, b.Size())
	buf := make([]byte, 4)
	n, err := b.ReadAt(buf, 3)
	require.NoError(t, err)
	require.Equal(t, "0042", string(buf[:n]))

	h := ctx.Blob(core.BlobAuth, 1)
	h.Append([]byte("tok"))
	h.Append([]byte("en-"))
	h.Append([]byte("xyz"))
	require.Equal(t, 9, h.Size())
	buf = make([]byte, 16)
	n, err = h.ReadAt(buf, 2)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, "ken-xyz", string(buf[:n]))
	h.Reset()
	require.Zero(t, h.Size())
}

// A notifier that destroys the context while New steps the system state
// sees every wake fd added before it is deleted, and none left added.
func TestDestroyInNotifierPollFDs(t *testing.T) {
	type key struct{ thread, fd int }
	added := map[key]bool{}
	var problems []string
	proto := core.Protocol{Name: "p", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonAddPollFD:
			k := key{ev.Thread.Index(), ev.Poll.FD}
			if added[k] {
				problems = append(problems, fmt.Sprintf("ADD twice: %v", k))
			}
			added[k] = true
		case core.ReasonDelPollFD:
			k := key{ev.Thread.Index(), ev.Poll.FD}
			if !added[k] {
				problems = append(problems, fmt.Sprintf("DEL before ADD: %v", k))
			}
			delete(added, k)
		}
		return nil
	}}
	ctx, err := core.New(core.Info{EventLib: "epoll", CountThreads: 3, Protocols: []core.Protocol{proto},
		Notifiers: []core.Notifier{{Name: "n", Notify: func(c *core.Context, _, next core.SystemState) bool {
			if next == core.SystemOperational {
				c.Destroy()
			}
			return true
		}}}})
	require.NoError(t, err)
	<-ctx.Done()
	require.Empty(t, problems)
	require.Empty(t, added, "fds left added after destroy")
}

// CONTEXT_DESTROYING is Destroy's to enter: SystemTransition used to step
// there, telling the notifiers the context was going down while it was not,
// and leaving the system in a state no later transition leaves (the states
// only step forward).
func TestSystemTransitionRefusesDestroying(t *testing.T) {
	var told []core.SystemState
	ctx, err := core.New(core.Info{
		Protocols: []core.Protocol{{Name: "p", Callback: nop}},
		Notifiers: []core.Notifier{{Name: "n", Notify: func(_ *core.Context, _, next core.SystemState) bool {
			told = append(told, next)
			return true
		}}},
	})
	require.NoError(t, err)
	defer ctx.Destroy()
	told = nil
	require.ErrorIs(t, ctx.SystemTransition(core.SystemContextDestroying), core.ErrInvalid)
	require.Equal(t, core.SystemOperational, ctx.SystemState())
	require.Empty(t, told, "nobody was told of a destruction")
}

// Attach takes only a state the system can reach: one past the last used
// to be kept in silence and never run, and SystemTransition refuses it.
func TestAttachStateOutOfRange(t *testing.T) {
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: nop}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	require.ErrorIs(t, ctx.Attach(0, core.SystemContextDestroying+1, func() {}), core.ErrInvalid)
	require.ErrorIs(t, ctx.Attach(0, -1, func() {}), core.ErrInvalid)
}
