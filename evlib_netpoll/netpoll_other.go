//go:build !linux

package evlib_netpoll

import (
	"errors"

	"github.com/plugloop/plugloop/evlib"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{Unavailable: errors.New("evlib_netpoll is built and tested on Linux only (cloudwego/netpoll's kqueue poller is untested with plugloop)")}
}
