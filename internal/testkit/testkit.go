//go:build unix

// Package testkit holds what plugloop's tests share: a TestMain that keeps
// PLUGLOOP_EVLIB from choosing the tests' backends, the backends a test
// binary can run, a bounded wait, the check that a test left no descriptor
// or goroutine behind, loopback listeners that share a port, and a TCP
// connection's two ends.
package testkit

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Main runs a test binary's tests with PLUGLOOP_EVLIB unset, for a
// package's TestMain. Every test names the backend it is about, so the
// variable, which overrides any name a program gives, would run them all on
// one backend: those about another would fail, or wait for events that
// never come. It says so on stderr when it unsets the variable.
func Main(m *testing.M) {
	if v, ok := os.LookupEnv(evlib.EnvVar); ok {
		fmt.Fprintf(os.Stderr, "plugloop tests: %s=%s ignored, each test names its backend\n", evlib.EnvVar, v)
		os.Unsetenv(evlib.EnvVar)
	}
	os.Exit(m.Run())
}

// Backends lists the backends the test binary can run: the built-in ones
// and whatever it links in.
func Backends(t testing.TB) []string {
	t.Helper()
	var names []string
	for _, d := range evlib.Backends() {
		if d.Available() {
			names = append(names, d.Name)
		}
	}
	require.NotEmpty(t, names)
	return names
}

// WaitFor waits for cond, giving up after within so that a bug fails the
// test instead of hanging it; it asserts nothing about time. describe, if
// given, says what it found instead.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool, describe ...func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			var found string
			for _, d := range describe {
				found += d()
			}
			t.Fatalf("gave up waiting for %s\n%s", what, found)
		}
		time.Sleep(time.Millisecond)
	}
}

// Baseline notes the process' descriptors and goroutines now and returns
// the check that the test left neither behind: it waits (up to within) for
// the goroutines to go back to the count, printing every stack if they do
// not, and requires the same descriptors open. What stays for good once
// used, the Go runtime's poller or a library's pollers, must exist before
// Baseline is called.
func Baseline(t testing.TB, within time.Duration) (check func()) {
	t.Helper()
	fds, gs := OpenFDs(t), runtime.NumGoroutine()
	return func() {
		t.Helper()
		WaitFor(t, within, "goroutines back to the count before the test", func() bool { return runtime.NumGoroutine() <= gs },
			func() string {
				buf := make([]byte, 1<<20)
				return string(buf[:runtime.Stack(buf, true)])
			})
		require.Equal(t, fds, OpenFDs(t), "descriptors left open")
	}
}

// OpenFDs lists the process' descriptors with what each refers to: from
// /proc/self/fd where there is one, else by asking fstat about every number
// below the descriptor limit.
func OpenFDs(t testing.TB) map[int]string {
	t.Helper()
	fds := map[int]string{}
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			fd, _ := strconv.Atoi(e.Name())
			if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
				fds[fd] = link
			}
		}
		return fds
	}
	var rl unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &rl))
	for fd := range int(min(uint64(rl.Cur), 1<<16)) {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			fds[fd] = fmt.Sprintf("mode %#o inode %d", st.Mode&unix.S_IFMT, st.Ino)
		}
	}
	return fds
}
