//go:build unix

package foreign_test

import (
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/foreign"
	"github.com/stretchr/testify/require"
)

// A PollSet follows one thread's fds (PollSet.Thread). Polled with another
// thread it used to return nil every time while that thread's fds were in
// no set, so nothing of it was ever serviced; now it says so.
func TestPollSetWrongThread(t *testing.T) {
	set := new(foreign.PollSet) // Thread 0
	ctx, err := core.New(core.Info{EventLib: foreign.Name, CountThreads: 2,
		Protocols: []core.Protocol{set.Protocol(core.Protocol{Name: "p", Callback: func(core.Event) error { return nil }})}})
	require.NoError(t, err)
	defer ctx.Destroy()
	require.ErrorIs(t, set.Poll(ctx.Thread(1), nil, time.Millisecond), core.ErrInvalid)
	require.ErrorIs(t, set.Poll(nil, nil, time.Millisecond), core.ErrInvalid)
	require.NoError(t, set.Poll(ctx.Thread(0), nil, time.Millisecond))

	// The same index in another context: the set holds none of its fds.
	other, err := core.New(core.Info{EventLib: foreign.Name,
		Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer other.Destroy()
	require.ErrorIs(t, set.Poll(other.Thread(0), nil, time.Millisecond), core.ErrInvalid)
	require.NoError(t, set.Poll(ctx.Thread(0), nil, time.Millisecond), "the set still serves its own thread")
}

// A PollSet whose Protocol wraps no protocol of the context (forgotten, or
// around one not first) hears of none of its fds: Poll says so, where it
// used to sleep with nothing watched while nobody was served.
func TestPollSetNotWired(t *testing.T) {
	set := new(foreign.PollSet)
	p := core.Protocol{Name: "p", Callback: func(core.Event) error { return nil }}
	ctx, err := core.New(core.Info{EventLib: foreign.Name, Protocols: []core.Protocol{p, set.Protocol(core.Protocol{Name: "q", Callback: p.Callback})}})
	require.NoError(t, err)
	defer ctx.Destroy()
	err = set.Poll(ctx.Thread(0), nil, time.Millisecond)
	require.ErrorIs(t, err, core.ErrInvalid)
	require.ErrorContains(t, err, "PollSet.Protocol")
}
