//go:build unix

package evlib_poll_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/evlib_poll"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, evlib_poll.Name)
}
