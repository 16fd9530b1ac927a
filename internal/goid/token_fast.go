//go:build (amd64 || arm64) && !purego

package goid

// Fast reports whether Token costs about a nanosecond here (it reads the
// runtime's goroutine register or thread-local slot) rather than ID's
// microseconds.
const Fast = true

// Token identifies the calling goroutine among those alive, never 0. A
// goroutine's token stays the same while it lives; one that has exited
// may leave its token to a new goroutine, so a token names a holder only
// while that holder cannot have exited (it is inside the call it holds).
func Token() uint64 { return uint64(getg()) }

// getg returns the address of the runtime's descriptor of the calling
// goroutine (token_amd64.s, token_arm64.s). The runtime never frees one:
// a goroutine that exits leaves it for reuse, so the address is never
// another object's.
func getg() uintptr
