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

// The whole suite again with millisecond waits (epoll_wait), the path
// kernels before 5.11 take: timeouts are rounded up, never down.
func TestConformanceMillisecondWaits(t *testing.T) {
	defer evlib_epoll.UseEpollWait()()
	conformance.Run(t, evlib_epoll.Name)
}
