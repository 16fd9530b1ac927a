//go:build unix && !linux

package sys

import "errors"

// SpliceRelay is false: this system has no splice(2), and a relay copies
// through a buffer of the core's.
const SpliceRelay = false

var errNoSplice = errors.New("splice(2) is Linux-only")

// NewRelayPipe is not used where SpliceRelay is false.
func NewRelayPipe(size int) (r, w, capacity int, err error) { return -1, -1, 0, errNoSplice }

// SplicedReset is not used where SpliceRelay is false.
func SplicedReset(fd int) bool { return false }

// Splice is not used where SpliceRelay is false.
func Splice(in, out, n int) (int, error) { return 0, errNoSplice }
