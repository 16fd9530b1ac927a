package evlib_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

type nopBackend struct{}

func (nopBackend) Add(int, evlib.Kind, evlib.Events) error { return nil }
func (nopBackend) Modify(int, evlib.Events) error          { return nil }
func (nopBackend) Remove(int) error                        { return nil }
func (nopBackend) Poll(time.Duration) (int, error)         { return 0, nil }
func (nopBackend) Close() error                            { return nil }

func newNop(evlib.Config) (evlib.Backend, error) { return nopBackend{}, nil }

func init() {
	for _, d := range []evlib.Descriptor{
		{Name: "test-a", Priority: -10, New: newNop},
		{Name: "test-down", Priority: 1000, New: newNop, Unavailable: errors.New("no kernel support")},
	} {
		if err := evlib.Register(d); err != nil {
			panic(err)
		}
	}
}

func TestRegisterRejects(t *testing.T) {
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "test-a", New: newNop}), "duplicate name")
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "", New: newNop}))
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "a,b", New: newNop}))
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "epoll", Flag: evlib.FlagPoll, New: newNop}), "built-in name with another flag")
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "mine", Flag: evlib.FlagGnet, New: newNop}), "built-in flag with another name")
	// Only plugloop's own backends have a flag: Select honours no other.
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "mine-combo", Flag: evlib.FlagPoll | evlib.FlagGnet, New: newNop}), "built-in flags combined under another name")
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "mine-high", Flag: 1 << 20, New: newNop}), "a flag no built-in backend has")
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "mine-nothing"}), "neither New nor Unavailable")
	require.Error(t, evlib.Register(evlib.Descriptor{Name: "mine\n", New: newNop}), "a name PLUGLOOP_EVLIB cannot carry")
	_, err := evlib.Lookup("mine-combo")
	require.ErrorIs(t, err, evlib.ErrUnknown, "a refused descriptor is not registered")
}

func TestLookup(t *testing.T) {
	d, err := evlib.Lookup("test-a")
	require.NoError(t, err)
	require.Equal(t, "test-a", d.Name)

	_, err = evlib.Lookup("nosuch")
	require.ErrorIs(t, err, evlib.ErrUnknown)
	require.Contains(t, err.Error(), "test-a", "the error lists what is available")

	_, err = evlib.Lookup("test-down")
	require.ErrorIs(t, err, evlib.ErrUnavailable)
	require.Contains(t, err.Error(), "no kernel support")

	// Built-in names are known even when their package is not linked in.
	_, err = evlib.Lookup("netpoll")
	require.ErrorIs(t, err, evlib.ErrUnavailable)
	require.Contains(t, err.Error(), "evlib_netpoll")
}

func TestBackendsListsEveryBuiltin(t *testing.T) {
	var names []string
	for _, d := range evlib.Backends() {
		names = append(names, d.Name)
	}
	for _, n := range []string{"poll", "epoll", "kqueue", "gnet", "netpoll", "foreign", "test-a", "test-down"} {
		require.Contains(t, names, n)
	}
	require.IsIncreasing(t, names)
}

func TestSelect(t *testing.T) {
	t.Setenv(evlib.EnvVar, "")

	d, err := evlib.Select(0, "test-a")
	require.NoError(t, err)
	require.Equal(t, "test-a", d.Name)

	// With nothing named, the available backend of highest priority wins;
	// an unavailable one never does.
	d, err = evlib.Select(0, "")
	require.NoError(t, err)
	require.NotEqual(t, "test-down", d.Name)
	require.True(t, d.Available())

	_, err = evlib.Select(evlib.FlagPoll|evlib.FlagEpoll, "")
	require.ErrorIs(t, err, evlib.ErrUnknown, "two flags")
	require.ErrorContains(t, err, "available: ", "two flags")

	_, err = evlib.Select(evlib.FlagNetpoll, "")
	require.ErrorIs(t, err, evlib.ErrUnavailable, "flag of a backend not linked in")

	_, err = evlib.Select(1<<20, "")
	require.ErrorIs(t, err, evlib.ErrUnknown, "a flag no backend has")
	require.ErrorContains(t, err, "available: ", "a flag no backend has")

	_, err = evlib.Select(evlib.FlagGnet, "test-a")
	require.Error(t, err, "name and flag disagree")
	require.ErrorContains(t, err, "available: ", "name and flag disagree")
}

func TestSelectEnvironmentOverrides(t *testing.T) {
	t.Setenv(evlib.EnvVar, "test-a")
	d, err := evlib.Select(evlib.FlagGnet, "other")
	require.NoError(t, err)
	require.Equal(t, "test-a", d.Name)

	t.Setenv(evlib.EnvVar, "bogus")
	_, err = evlib.Select(0, "test-a")
	require.ErrorIs(t, err, evlib.ErrUnknown)
	require.True(t, strings.HasPrefix(err.Error(), evlib.EnvVar+"=bogus"), err.Error())
}

func TestEventsAndCapsString(t *testing.T) {
	require.Equal(t, "R|W|HUP|ERR", (evlib.Readable | evlib.Writable | evlib.Hangup | evlib.Error).String())
	require.Equal(t, "0", evlib.Events(0).String())
	require.Equal(t, "R|0x10", (evlib.Readable | 16).String(), "a bit of no name is shown, not dropped")
	require.Equal(t, "0x10", evlib.Events(16).String())
	require.Equal(t, "readiness,0x1000", (evlib.CapReadiness | 1<<12).String())
	require.Equal(t, "readiness,foreign-loop", (evlib.CapReadiness | evlib.CapForeignLoop).String())
	require.Equal(t, "library-goroutines,hangup-without-interest,unix-reset", (evlib.CapLibraryGoroutines | evlib.CapHangupWithoutInterest | evlib.CapUnixReset).String())
}
