//go:build unix

package conformance

import (
	"maps"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The portable fd listing used where /proc is missing finds the same
// descriptors as /proc, and both see a new one come and go.
func TestFDListings(t *testing.T) {
	proc, ok := procFDs()
	if !ok {
		t.Skip("no /proc/self/fd here to compare the fcntl listing with")
	}
	byFcntl := fcntlFDs()
	require.Equal(t, slices.Sorted(maps.Keys(proc)), slices.Sorted(maps.Keys(byFcntl)))

	a, b := nonblockPair(t)
	for _, list := range []func() map[int]string{func() map[int]string { m, _ := procFDs(); return m }, fcntlFDs} {
		now := list()
		require.Contains(t, now, a)
		require.Contains(t, now, b)
	}
	require.NotEmpty(t, fdDiff(proc, openFDs()))
	unix.Close(a)
	unix.Close(b)
	require.Empty(t, fdDiff(proc, openFDs()))
}
