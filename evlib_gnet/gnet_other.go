//go:build !linux && !poll_opt

package evlib_gnet

import (
	"errors"

	"github.com/plugloop/plugloop/evlib"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{Unavailable: errors.New("the gnet backend runs on gnet's epoll poller, which exists only on Linux (use kqueue here)")}
}
