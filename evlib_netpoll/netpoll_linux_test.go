//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"testing"

	"github.com/cloudwego/netpoll"
	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/evlib_netpoll"
)

// netpoll starts its pollers (a goroutine, an epoll fd and an eventfd
// each) on first use and keeps them for the life of the process. Start
// them before the suite takes its baseline of goroutines and descriptors,
// so that they are not counted as leaks of the backend. (Not done in the
// package's init: a program that links the backend in but does not use it
// should not pay for them.)
func TestConformance(t *testing.T) {
	netpoll.Initialize()
	conformance.Run(t, evlib_netpoll.Name)
}
