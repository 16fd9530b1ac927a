//go:build unix

package simloop_test

import (
	"bytes"
	"os"
	"os/exec"
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/internal/simloop"
)

// childEnv marks the test binary re-executed by TestConformance.
const childEnv = "SIMLOOP_CONFORMANCE_CHILD"

// TestConformance runs the conformance suite's Backend and NoLeaks parts
// against the sim backend: every Add/Modify/Remove/Poll/Close rule of the
// contract, on real fds, and nothing left behind.
//
// Its Core part cannot pass, by design: it runs the loop on a goroutine of
// its own (Context.Run) while the test acts in wall time, and asserts wall
// time. An idle sim loop jumps its clock to the next deadline at once, so
// timers fire before their delay has passed on the wall clock (Timers,
// ConnTimers, TimersAfterIdleWait), an hour's timer the test keeps pending
// fires (TimerScheduledEarlier, WrongGoroutine/Blocked), and a close
// waiting for the peer meets its CloseTimeout before the peer acts
// (ClosePolicy/Graceful*, HangupWhilePaused). Everything else of it passes
// (run it with SIMLOOP_CONFORMANCE_CHILD=1 go test -run TestConformance).
//
// The suite has no entry point for some of its parts, so the test runs
// itself again in a child process, selecting them with -test.run.
func TestConformance(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		conformance.Run(t, simloop.Name)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestConformance$/^(Backend|NoLeaks)$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestConformance/NoLeaks")) {
		t.Fatalf("the conformance suite's Backend and NoLeaks parts (%v):\n%s", err, out)
	}
	t.Logf("%s", out)
}
