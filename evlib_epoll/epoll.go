// Package evlib_epoll is plugloop's epoll(7) backend for Linux: level
// triggered, one epoll_ctl per real interest change, and after a busy batch
// one non-blocking epoll_wait before it blocks, which keeps a loaded loop
// from parking its thread between batches.
//
// Import it for its side effect of registering the backend "epoll":
//
//	import _ "github.com/plugloop/plugloop/evlib_epoll"
//
// The core imports it already, so it is the default on Linux. It can attach
// to an epoll instance the application owns (evlib.CapForeignLoop): pass the
// epoll fd, as an int, in core.Info.Foreign.
package evlib_epoll

import "github.com/plugloop/plugloop/evlib"

// Name is the backend's registry name.
const Name = "epoll"

func init() {
	d := descriptor()
	d.Name, d.Flag, d.Priority = Name, evlib.FlagEpoll, 20
	if err := evlib.Register(d); err != nil {
		panic(err)
	}
}
