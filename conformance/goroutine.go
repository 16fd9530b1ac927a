package conformance

import "github.com/plugloop/plugloop/internal/goid"

// exactGoroutine tells whether the core checks the calling goroutine of
// every loop-only call (as core.ErrWrongGoroutine says: on amd64 and arm64,
// and in race-enabled builds), so that a call from another goroutine is
// refused even while the loop runs a callback.
const exactGoroutine = goid.Fast || raceEnabled
