//go:build race

package core

import "github.com/plugloop/plugloop/internal/goid"

// exactOwner: race-enabled builds also verify the calling goroutine's
// identity on every loop-only call. Reading it costs ~1.7 µs, too much for
// the hot path of an optimized build, where the state check alone applies.
const exactOwner = true

func goroutineID() uint64 { return goid.ID() }
