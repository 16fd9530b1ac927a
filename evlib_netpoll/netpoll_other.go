//go:build !linux

package evlib_netpoll

import (
	"errors"

	"github.com/plugloop/plugloop/evlib"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{Unavailable: errors.New("evlib_netpoll runs on Linux only: cloudwego/netpoll v0.7.2 does not build on netbsd/openbsd (no EVFILT_USER), and its kqueue poller on darwin/freebsd is untested with plugloop")}
}
