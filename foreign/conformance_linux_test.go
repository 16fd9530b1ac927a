package foreign_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	_ "github.com/plugloop/plugloop/evlib_epoll"
)

// The whole suite with plugloop's epoll backend attached to an epoll
// instance the suite's loop owns.
func TestConformanceEpollHost(t *testing.T) {
	conformance.RunHost(t, conformance.EpollHost())
}
