//go:build linux

package evlib_gnet_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/evlib_gnet"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, evlib_gnet.Name)
}
