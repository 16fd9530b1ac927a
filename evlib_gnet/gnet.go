// Package evlib_gnet is plugloop's backend on gnet's poller: the exported
// Poller of github.com/panjf2000/gnet/v2/pkg/netpoll (v2.10.0), not gnet's
// Engine. It is cgo-free, level-triggered, and the core does its own reads,
// writes and accepts on the raw fds.
//
// Import it for its side effect of registering the backend "gnet":
//
//	import _ "github.com/plugloop/plugloop/evlib_gnet"
//
// then select it with core.Info{EventLib: "gnet"}, evlib.FlagGnet or
// PLUGLOOP_EVLIB=gnet. Its priority is below epoll's, so it is never the
// default.
//
// gnet's Polling owns the wait loop and has no timeout, so the backend is
// an evlib.Looper: Context.Run runs Polling on the calling goroutine. gnet
// hands over each batch one fd at a time and shows no batch end; the
// backend holds a batch's events and gives them to the core in fd order,
// followed by one Pass, when an eventfd it wrote at the batch's first
// event comes back with the next epoll_wait (after a batch of one fd, the
// next few go to the core at once). Thread.Service (a single pass) uses
// Poll, which enters Polling and leaves it after the first batch or the
// timeout; it is slower than Run but correct.
//
// The backend needs epoll: it runs on Linux only (gnet's kqueue poller has
// another event model). Elsewhere it registers as unavailable. The gnet
// build tag poll_opt changes the Poller's API and crashes under -race
// (checkptr), so this package refuses to build with it.
//
// It can share a *netpoll.Poller the application owns and polls
// (evlib.CapForeignLoop): see Dispatcher.
//
// gnet's Poller has no registration without events (interest 0 deletes the
// fd from its epoll set), so the backend reports nothing for such an fd and
// does not declare evlib.CapHangupWithoutInterest: a half-open connection
// (core.Protocol.AllowHalfOpen) learns of its peer's reset when it writes
// or times out.
package evlib_gnet

import "github.com/plugloop/plugloop/evlib"

// Name is the backend's registry name.
const Name = "gnet"

func init() {
	d := descriptor()
	d.Name, d.Flag, d.Priority = Name, evlib.FlagGnet, 5
	if err := evlib.Register(d); err != nil {
		panic(err)
	}
}
