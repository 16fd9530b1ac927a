//go:build linux

package evlib_gnet

import "github.com/plugloop/plugloop/evlib"

// Specials returns the read ends of a backend's own eventfds, for tests
// that tell their events from the application's.
func Specials(be evlib.Backend) (sig, idle, reap, due int) {
	b := be.(*Backend)
	return b.sig.R, b.idle.R, b.reap.R, b.due.R
}
