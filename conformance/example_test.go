//go:build unix

package conformance_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/evlib"
)

// A backend package registers itself from init and runs the suite from
// one test in its own _test.go file.
func ExampleRun() {
	// In evlib_mine/mine_test.go:
	test := func(t *testing.T) {
		conformance.Run(t, "mine")
	}
	_ = test
}

// A backend that is not registered (a program builds it and hands the
// descriptor over itself) runs the suite with RunBackend; the suite
// registers it under its name for the core-level tests.
func ExampleRunBackend() {
	var newMine func(evlib.Config) (evlib.Backend, error) // the backend's constructor
	test := func(t *testing.T) {
		conformance.RunBackend(t, evlib.Descriptor{
			Name: "mine",
			Caps: evlib.CapReadiness | evlib.CapRxBackpressure | evlib.CapUnixReset,
			New:  newMine,
		})
	}
	_ = test
}
