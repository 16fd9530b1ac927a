//go:build race

package conformance

// raceEnabled: the core verifies the calling goroutine exactly only in
// race-enabled builds.
const raceEnabled = true
