//go:build linux

package evlib_test

import (
	"errors"
	"fmt"

	"github.com/plugloop/plugloop/evlib"
	_ "github.com/plugloop/plugloop/evlib_epoll"
	_ "github.com/plugloop/plugloop/evlib_poll"
)

// The three ways a program picks its backend: by option flag, by name, or
// not at all, which takes the best available here (epoll on Linux).
// PLUGLOOP_EVLIB, when set, overrides all three, so that a deployed program
// moves to another backend without a rebuild; core.New calls Select with
// Info.Options and Info.EventLib.
func ExampleSelect() {
	byFlag, _ := evlib.Select(evlib.FlagPoll, "")
	byName, _ := evlib.Select(0, "poll")
	best, _ := evlib.Select(0, "")
	fmt.Println(byFlag.Name, byName.Name, best.Name)

	// A name nobody registered, and a built-in backend whose package this
	// program does not import: both errors list what is available, and
	// the second names the package to import.
	_, err := evlib.Select(0, "libuv")
	fmt.Println(errors.Is(err, evlib.ErrUnknown))
	_, err = evlib.Select(evlib.FlagNetpoll, "")
	fmt.Println(errors.Is(err, evlib.ErrUnavailable))
	// Output:
	// poll poll epoll
	// true
	// true
}

// A backend's declared capabilities are what the core relies on and what
// the conformance suite checks.
func ExampleLookup() {
	d, err := evlib.Lookup("epoll")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(d.Caps)
	// Output:
	// readiness,rx-backpressure,foreign-loop,files,hangup-without-interest,unix-reset
}
