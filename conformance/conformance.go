//go:build unix

package conformance

import (
	"errors"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// Run runs the whole suite against the backend registered under name. A
// backend that is registered but cannot run here (evlib.ErrUnavailable,
// say epoll on macOS) is skipped with the reason; an unknown name fails.
//
// Run sets up subtests "Backend", "Core" and "NoLeaks" and runs them one
// after the other; t must not be a parallel test. If PLUGLOOP_EVLIB is
// set, Run clears it for the duration, so the core-level tests really run
// on the named backend.
func Run(t *testing.T, name string) {
	t.Helper()
	runSuite(t, lookup(t, name), nil)
}

// lookup returns the backend registered under name, skipping t if it
// cannot run here.
func lookup(t *testing.T, name string) evlib.Descriptor {
	t.Helper()
	d, err := evlib.Lookup(name)
	if errors.Is(err, evlib.ErrUnavailable) {
		t.Skipf("conformance: backend %q cannot run here: %v", name, err)
	}
	require.NoError(t, err, "conformance: looking up backend %q", name)
	return d
}

// RunBackend runs the whole suite against d, a backend that need not be
// registered: the backend-level tests call d.New directly, and the
// core-level tests, which select backends by name, run on d after the
// suite registers it with evlib.Register if no backend has its Name yet.
// If one has, it must be d itself (the suite checks the declared
// capabilities agree). d.Flag must be 0 unless d is one of plugloop's own
// backends.
func RunBackend(t *testing.T, d evlib.Descriptor) {
	t.Helper()
	if d.New == nil {
		t.Fatalf("conformance: descriptor %q has no New", d.Name)
	}
	if d.Unavailable != nil {
		t.Skipf("conformance: backend %q cannot run here: %v", d.Name, d.Unavailable)
	}
	reg, err := evlib.Lookup(d.Name)
	if err != nil {
		require.NoError(t, evlib.Register(d), "conformance: registering backend %q", d.Name)
	} else {
		require.Equal(t, d.Caps, reg.Caps, "conformance: a backend named %q with other capabilities is registered already", d.Name)
	}
	runSuite(t, d, nil)
}

// RunContract runs the part of the suite that checks the evlib contract
// alone, against the backend registered under name: subtests "Backend"
// and "NoLeaks", without the core-level tests ("Core"). It is for a
// backend under construction, before it runs the core, and for one whose
// time is not the wall clock (a simulated backend with a fake clock, such
// as internal/simloop's), which the core-level tests measure. A backend
// that cannot run here is skipped as in Run.
func RunContract(t *testing.T, name string) {
	t.Helper()
	runParts(t, lookup(t, name), nil, false)
}

// suite is one run of the suite against one backend.
type suite struct {
	name string
	desc evlib.Descriptor
	host *Host // the application's loop (foreign mode), or nil: Context.Run
}

// oneGoroutine reports whether the core must run on the goroutine
// servicing each thread: true unless the backend declares
// evlib.CapLibraryGoroutines.
func (s *suite) oneGoroutine() bool { return s.desc.Caps&evlib.CapLibraryGoroutines == 0 }

// onLoopGoroutine checks that a callback ran on the goroutine running the
// loop, where the backend promises it.
func (s *suite) onLoopGoroutine(t *testing.T, h *harness, g uint64, format string, args ...any) {
	t.Helper()
	if s.oneGoroutine() {
		require.Equal(t, h.runG.Load(), g, append([]any{"not on the goroutine running the loop: " + format}, args...)...)
	}
}

type subtest struct {
	name string
	f    func(*testing.T)
}

func runSuite(t *testing.T, d evlib.Descriptor, host *Host) {
	t.Helper()
	runParts(t, d, host, true)
}

// runParts runs subtests "Backend", "Core" (if core) and "NoLeaks".
func runParts(t *testing.T, d evlib.Descriptor, host *Host, core bool) {
	t.Helper()
	if os.Getenv(evlib.EnvVar) != "" {
		t.Setenv(evlib.EnvVar, "")
	}
	if host == nil && d.Caps&evlib.CapAppDriven != 0 {
		h := PollSetHost(d.Name) // an app-driven backend needs an application's loop
		host = &h
	}
	s := &suite{name: d.Name, desc: d, host: host}
	t.Logf("conformance: backend %q, capabilities %v", d.Name, d.Caps)

	// Let the Go runtime open what it keeps open for good (its own
	// poller) before the baseline is taken.
	if ln, err := net.Listen("tcp4", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	baseFDs := openFDs()
	baseG := runtime.NumGoroutine()

	backendOK := t.Run("Backend", func(t *testing.T) {
		for _, st := range s.backendTests() {
			t.Run(st.name, st.f)
		}
	})
	if core {
		t.Run("Core", func(t *testing.T) {
			if !backendOK {
				t.Skip("conformance: the Backend part failed; the Core part is skipped, as each of its tests would wait out its hang guard on the same fault: fix the Backend part first")
			}
			tests := append(s.coreTests(), s.moreCoreTests()...)
			tests = append(tests, s.relayTests()...)
			tests = append(tests, subtest{"Leaks", s.testLeaks})
			if s.host != nil {
				t.Logf("conformance: foreign mode, the suite's loop is host %q", s.host.Name)
				tests = append(tests, s.hostTests()...)
			}
			for _, st := range tests {
				t.Run(st.name, st.f)
			}
		})
	}
	earlierFailed := t.Failed()
	t.Run("NoLeaks", func(t *testing.T) {
		if earlierFailed {
			t.Log("conformance: earlier subtests failed: what leaked may be what they left behind, not the backend's")
		}
		// Every subtest cleaned up after itself: the process must hold
		// the descriptors and goroutines it held before the suite.
		checkGoroutines(t, baseG+1) // +1: this subtest's own goroutine
		checkFDs(t, baseFDs)
	})
}
