//go:build unix

package core_test

import (
	"errors"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
)

// A PROTOCOL_INIT that fails fails New, as it fails lws' context creation:
// the protocols initialized before it are told PROTOCOL_DESTROY, the ones
// after it nothing, and the context leaves no descriptor or goroutine
// behind.
func TestProtocolInitErrorFailsNew(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			check := testkit.Baseline(t, 10*time.Second)
			errNoDB := errors.New("no database")
			var got []string
			proto := func(name string, fail error) core.Protocol {
				return core.Protocol{Name: name, Callback: func(ev core.Event) error {
					got = append(got, name+" "+ev.Reason.String())
					if ev.Reason == core.ReasonProtocolInit {
						return fail
					}
					return nil
				}}
			}
			ctx, err := core.New(core.Info{EventLib: lib, CountThreads: 2, Protocols: []core.Protocol{
				proto("a", nil), proto("b", errNoDB), proto("c", nil)}})
			require.ErrorIs(t, err, errNoDB)
			require.ErrorContains(t, err, `"b"`, "the error names the protocol")
			require.Nil(t, ctx)
			require.Equal(t, []string{"a PROTOCOL_INIT", "b PROTOCOL_INIT", "a PROTOCOL_DESTROY"}, got)
			check()
		})
	}
}
