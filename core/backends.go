//go:build unix

package core

// The backends that need nothing beyond golang.org/x/sys are linked into
// every program, so the default choice and the names "poll" and "epoll"
// work without an import. Adapters with dependencies of their own (gnet,
// netpoll) and the foreign mode are linked in by importing their packages.
import (
	_ "github.com/plugloop/plugloop/evlib_epoll"
	_ "github.com/plugloop/plugloop/evlib_kqueue"
	_ "github.com/plugloop/plugloop/evlib_poll"
)
