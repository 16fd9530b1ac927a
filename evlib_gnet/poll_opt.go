//go:build poll_opt

package evlib_gnet

import "github.com/plugloop/plugloop/evlib"

// gnet's poll_opt build tag changes netpoll.Poller's API (Polling takes no
// callback; a *PollAttachment is kept in epoll_event.data where the garbage
// collector cannot see it) and crashes under -race with "checkptr:
// misaligned pointer conversion". This backend supports the default build
// only; this deliberate type error stops a poll_opt build with a message
// that says so.
const evlib_gnet_does_not_support_the_gnet_poll_opt_build_tag_build_without_it int = "-tags poll_opt is unsupported: it changes gnet's Poller API and crashes under -race (checkptr)"

func descriptor() evlib.Descriptor { return evlib.Descriptor{} }
