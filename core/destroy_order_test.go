//go:build unix

package core_test

import (
	"sync/atomic"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// closeCounting is a backend that counts its Close calls.
type closeCounting struct {
	evlib.Backend
	closed *atomic.Int32
}

func (b closeCounting) Close() error {
	b.closed.Add(1)
	return b.Backend.Close()
}

// Destruction is complete when PROTOCOL_DESTROY comes and Done is closed:
// every thread's backend is closed by then, so an application that owns
// the loop finds nothing of plugloop's left in it once Done is closed.
func TestDestroyClosesBackendsBeforeDone(t *testing.T) {
	var closed atomic.Int32
	d, err := evlib.Lookup("poll")
	require.NoError(t, err)
	inner := d.New
	d.Name, d.Flag = "poll-counting-close", 0
	d.New = func(cfg evlib.Config) (evlib.Backend, error) {
		b, err := inner(cfg)
		if err != nil {
			return nil, err
		}
		return closeCounting{b, &closed}, nil
	}
	if _, err := evlib.Lookup(d.Name); err != nil { // registered by an earlier -count run
		require.NoError(t, evlib.Register(d))
	}
	for _, threads := range []int{1, 3} {
		closed.Store(0)
		atDestroy := int32(-1)
		ctx, err := core.New(core.Info{EventLib: d.Name, CountThreads: threads, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonProtocolDestroy {
				atDestroy = closed.Load()
			}
			return nil
		}}}})
		require.NoError(t, err)
		require.NoError(t, ctx.Destroy())
		<-ctx.Done()
		require.Equal(t, int32(threads), atDestroy, "backends closed when PROTOCOL_DESTROY came (%d threads)", threads)
		require.Equal(t, int32(threads), closed.Load(), "backends closed when Done was closed (%d threads)", threads)
	}
}
