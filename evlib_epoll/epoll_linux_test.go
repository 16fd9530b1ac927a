//go:build linux

package evlib_epoll_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/evlib_epoll"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, evlib_epoll.Name)
}
