//go:build race

package conformance

// raceEnabled: the race detector slows the loop (fewer Model steps).
const raceEnabled = true
