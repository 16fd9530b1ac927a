//go:build unix

package core_test

import (
	"sync/atomic"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// closeCounting is a backend that counts its Close calls in closeCount.
type closeCounting struct{ evlib.Backend }

// closeCount is package-wide because the registry is process-wide.
var closeCount atomic.Int32

func (b closeCounting) Close() error {
	closeCount.Add(1)
	return b.Backend.Close()
}

// registerCloseCounting registers "poll-counting-close", the poll backend
// counting its Close calls.
func registerCloseCounting(t *testing.T) string {
	const name = "poll-counting-close"
	registerWrappedPoll(t, name, func(b evlib.Backend) evlib.Backend { return closeCounting{b} })
	return name
}

// registerWrappedPoll registers, once per process (the registry outlives
// a -count run), the poll backend under name, each instance wrapped by
// wrap: a test's way to change one method of a real backend.
func registerWrappedPoll(t *testing.T, name string, wrap func(evlib.Backend) evlib.Backend) {
	t.Helper()
	registerWrappedPollWithout(t, name, 0, wrap)
}

// registerWrappedPollWithout is registerWrappedPoll for a backend that
// declares poll's capabilities less drop.
func registerWrappedPollWithout(t *testing.T, name string, drop evlib.Caps, wrap func(evlib.Backend) evlib.Backend) {
	t.Helper()
	if _, err := evlib.Lookup(name); err == nil {
		return
	}
	d, err := evlib.Lookup("poll")
	require.NoError(t, err)
	poll := d.New
	d.Name, d.Flag, d.Priority = name, 0, -1
	d.Caps &^= drop
	d.New = func(cfg evlib.Config) (evlib.Backend, error) {
		b, err := poll(cfg)
		if err != nil {
			return nil, err
		}
		return wrap(b), nil
	}
	require.NoError(t, evlib.Register(d))
}

// Destruction is complete when PROTOCOL_DESTROY comes and Done is closed:
// every thread's backend is closed by then, so an application that owns
// the loop finds nothing of plugloop's left in it once Done is closed.
func TestDestroyClosesBackendsBeforeDone(t *testing.T) {
	name := registerCloseCounting(t)
	for _, threads := range []int{1, 3} {
		closeCount.Store(0)
		atDestroy := int32(-1)
		ctx, err := core.New(core.Info{EventLib: name, CountThreads: threads, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonProtocolDestroy {
				atDestroy = closeCount.Load()
			}
			return nil
		}}}})
		require.NoError(t, err)
		require.NoError(t, ctx.Destroy())
		<-ctx.Done()
		require.Equal(t, int32(threads), atDestroy, "backends closed when PROTOCOL_DESTROY came (%d threads)", threads)
		require.Equal(t, int32(threads), closeCount.Load(), "backends closed when Done was closed (%d threads)", threads)
	}
}
