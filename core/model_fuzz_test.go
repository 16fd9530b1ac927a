//go:build unix

package core_test

import (
	"math/rand/v2"
	"testing"

	"github.com/plugloop/plugloop/conformance"
)

// FuzzModel runs the conformance suite's model-based test on programs the
// fuzzer makes, on the poll backend: a few connections and steps of peer
// and application I/O, rx flow control, closes, timers and CancelService,
// each callback and byte checked against what the core's documentation
// promises (see conformance.RunModel). Without -fuzz, go test runs the
// seeds added here; to search:
//
//	go test -run '^$' -fuzz FuzzModel -fuzztime 60s -fuzzminimizetime 2s ./core
//
// The loop's coverage varies from run to run, so many inputs look new:
// minimizing each for the default minute would leave little time to
// search. An input that fails belongs in the conformance suite's found
// directory, which every backend runs; plain random programs
// (conformance.SweepEnv) have found more than this target has.
func FuzzModel(f *testing.F) {
	f.Add([]byte{}) // one connection, no step
	for seed := range uint64(4) {
		r := rand.New(rand.NewPCG(seed, 0x66757a7a)) // "fuzz"
		p := make([]byte, 6+4*100)                   // the header, 100 steps
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, program []byte) {
		conformance.RunModel(t, "poll", program)
	})
}
