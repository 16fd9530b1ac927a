//go:build !(amd64 || arm64) || purego

package goid

// Fast reports whether Token costs about a nanosecond here; on this
// architecture it is ID.
const Fast = false

// Token identifies the calling goroutine among those alive, never 0 (here
// its ID).
func Token() uint64 { return ID() }
