//go:build !linux

package evlib_epoll

import (
	"errors"

	"github.com/plugloop/plugloop/evlib"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{Unavailable: errors.New("epoll exists only on Linux")}
}
