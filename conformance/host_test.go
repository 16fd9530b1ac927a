//go:build unix

package conformance

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/stretchr/testify/require"
)

// A host that runs a single application loop makes the tests of several
// service threads skip, saying so, rather than pass without having run;
// and it leaves nothing open behind.
func TestSingleLoopHostSkipsSMP(t *testing.T) {
	d, err := evlib.Lookup(foreign.Name)
	require.NoError(t, err)
	several := PollSetHost(foreign.Name)
	single := Host{Name: "single", EventLib: foreign.Name, New: func(t testing.TB, thread int) HostLoop {
		if thread > 0 {
			return nil
		}
		return several.New(t, thread)
	}}
	base, baseG := openFDs(), runtime.NumGoroutine()
	for _, n := range []int{2, 3} {
		var inner *testing.T
		t.Run(fmt.Sprintf("single/%d", n), func(t *testing.T) {
			inner = t
			(&suite{name: d.Name, desc: d, host: &single}).testSMPThreads(t, n)
		})
		require.True(t, inner.Skipped(), "SMP with %d threads on a single-loop host", n)
		t.Run(fmt.Sprintf("several/%d", n), func(t *testing.T) {
			inner = t
			(&suite{name: d.Name, desc: d, host: &several}).testSMPThreads(t, n)
		})
		require.False(t, inner.Skipped(), "SMP with %d threads on a loop per thread", n)
	}
	checkFDs(t, base)
	checkGoroutines(t, baseG)
}
