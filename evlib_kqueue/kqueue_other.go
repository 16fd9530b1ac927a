//go:build !(darwin || dragonfly || freebsd || netbsd || openbsd)

package evlib_kqueue

import (
	"errors"

	"github.com/plugloop/plugloop/evlib"
)

func descriptor() evlib.Descriptor {
	return evlib.Descriptor{Unavailable: errors.New("kqueue exists only on macOS and the BSDs")}
}
