//go:build unix

package foreign_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/foreign"
)

// The whole suite with the core in foreign mode inside a unix.Poll loop
// kept by PollSet; conformance.Run picks that host for the app-driven
// backend by itself.
func TestConformancePollSet(t *testing.T) {
	conformance.Run(t, foreign.Name)
}
