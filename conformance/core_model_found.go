//go:build unix

package conformance

import (
	"embed"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"strconv"
	"strings"
)

// Programs of the model-based test that once failed: on the backend that
// found them, and maybe only there, because each backend's timing and way
// of reading lead the core down other paths. Every backend runs them all
// (the Model subtest's "found=" subtests). A file holds comment lines
// beginning with '#', which say what the program found and where it was
// fixed, then the program in hex.
//
//go:embed found/*.hex
var foundFS embed.FS

type namedProgram struct {
	name    string
	program []byte
}

// foundPrograms returns the programs of foundFS in name order.
func foundPrograms() ([]namedProgram, error) {
	entries, err := foundFS.ReadDir("found")
	if err != nil {
		return nil, err
	}
	var progs []namedProgram
	for _, e := range entries {
		data, err := foundFS.ReadFile(path.Join("found", e.Name()))
		if err != nil {
			return nil, err
		}
		var h strings.Builder
		for line := range strings.Lines(string(data)) {
			if line = strings.TrimSpace(line); !strings.HasPrefix(line, "#") {
				h.WriteString(line)
			}
		}
		p, err := hex.DecodeString(h.String())
		if err != nil {
			return nil, fmt.Errorf("found/%s: %w", e.Name(), err)
		}
		progs = append(progs, namedProgram{strings.TrimSuffix(e.Name(), ".hex"), p})
	}
	return progs, nil
}

// SweepEnv names the environment variable that makes the Model subtest run
// random programs besides its fixed ones: "SEED:N" runs N programs drawn
// from SEED, of 1 to 400 steps each (the most a program has), as subtests
// "sweep=SEED.I"; each depends only on SEED and I, so that one subtest
// alone runs its program again. The fuzzer finds little here (each run of
// the loop looks new to its coverage, and a backend's own library may make
// its runs slow), where thousands of plain programs found every bug of
// foundFS:
//
//	PLUGLOOP_MODEL_SWEEP=7:3000 go test -run 'TestConformance$/Core/Model$' ./evlib_epoll
const SweepEnv = "PLUGLOOP_MODEL_SWEEP"

// modelSweep reads SweepEnv: n is 0 when it is unset.
func modelSweep() (seed uint64, n int, err error) {
	v := os.Getenv(SweepEnv)
	if v == "" {
		return 0, 0, nil
	}
	s, c, found := strings.Cut(v, ":")
	seed, err1 := strconv.ParseUint(s, 10, 64)
	n, err2 := strconv.Atoi(c)
	if !found || err1 != nil || err2 != nil || n < 0 {
		return 0, 0, fmt.Errorf("conformance: %s=%q: want SEED:N, two decimal numbers (7:3000)", SweepEnv, v)
	}
	return seed, n, nil
}

// sweepProgram is program i of a sweep from seed.
func sweepProgram(seed uint64, i int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	p := make([]byte, modelHeader+modelStepLen*(1+r.IntN(maxModelSteps)))
	for j := range p {
		p[j] = byte(r.Uint32())
	}
	return p
}
