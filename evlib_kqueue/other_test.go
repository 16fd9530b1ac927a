//go:build !(darwin || dragonfly || freebsd || netbsd || openbsd)

package evlib_kqueue

import (
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// Linked into a program on a system without kqueue, the backend is known
// by name and flag, and says why it cannot run.
func TestUnavailableHere(t *testing.T) {
	d, err := evlib.Lookup(Name)
	require.ErrorIs(t, err, evlib.ErrUnavailable)
	require.ErrorContains(t, err, "kqueue exists only on macOS and the BSDs")
	require.Equal(t, evlib.FlagKqueue, d.Flag)
	require.False(t, d.Available())
	require.Nil(t, d.New)

	_, err = evlib.Select(evlib.FlagKqueue, "")
	require.ErrorIs(t, err, evlib.ErrUnavailable)
}
