//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package selectbackend

import (
	"fmt"
	"runtime"

	"github.com/plugloop/plugloop/evlib"
)

// errUnavailable says why the backend cannot run here: it registers anyway,
// so that a program that links it builds on every system and says why
// when the backend is selected.
var errUnavailable = fmt.Errorf("%w: the select backend runs on linux, darwin, freebsd, netbsd, openbsd and dragonfly, not %s",
	evlib.ErrUnavailable, runtime.GOOS)

// New fails here: see the package documentation for the systems the
// backend runs on.
func New(evlib.Config) (evlib.Backend, error) { return nil, errUnavailable }
