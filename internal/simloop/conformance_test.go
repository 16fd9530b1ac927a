//go:build unix

package simloop_test

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/internal/simloop"
)

// childEnv marks the test binary re-executed by TestConformance.
const childEnv = "SIMLOOP_CONFORMANCE_CHILD"

// TestConformance runs the conformance suite's Backend and NoLeaks parts
// against both sim backends: every rule of the contract a backend keeps on
// its own, on real fds, and nothing left behind.
//
// The suite's Core part cannot pass, by design: it runs the loop on a
// goroutine of its own (Context.Run, or for "sim-foreign" its poll(2)
// host) while the test acts and measures in wall time. An idle "sim" loop
// jumps its clock to the next deadline at once, so timers fire before
// their delay has passed on the wall clock (Timers, ConnTimers,
// TimersAfterIdleWait), an hour's timer the test keeps pending fires
// (TimerScheduledEarlier, WrongGoroutine/Blocked), and a close waiting for
// the peer meets its CloseTimeout before the peer acts (ClosePolicy/
// Graceful*, HangupWhilePaused); the rest of it passes. The suite's host
// for "sim-foreign" sleeps for real and never moves the clock, so there
// no timer ever fires. To see it: SIMLOOP_CONFORMANCE_CHILD=1 go test
// -run TestConformance.
//
// The suite has no entry point for some of its parts, so the test runs
// itself again in a child process, selecting them with -test.run.
func TestConformance(t *testing.T) {
	for _, name := range []string{simloop.Name, simloop.ForeignName} {
		t.Run(name, func(t *testing.T) {
			if os.Getenv(childEnv) != "" {
				conformance.Run(t, name)
				return
			}
			run := "-test.run=^TestConformance$/^" + regexp.QuoteMeta(name) + "$/^(Backend|NoLeaks)$"
			cmd := exec.Command(os.Args[0], run, "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), childEnv+"=1")
			out, err := cmd.CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name()+"/NoLeaks")) {
				t.Fatalf("the conformance suite's Backend and NoLeaks parts (%v):\n%s", err, out)
			}
			t.Logf("%s", out)
		})
	}
}
