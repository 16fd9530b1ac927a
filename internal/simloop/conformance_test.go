//go:build unix

package simloop_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/internal/simloop"
)

// TestConformance runs the part of the conformance suite that checks the
// evlib contract alone (conformance.RunContract) against both sim
// backends: every rule a backend keeps on its own, on real fds, and
// nothing left behind.
//
// The suite's core-level part cannot pass, by design: it runs the loop on
// a goroutine of its own (Context.Run, or for "sim-foreign" its poll(2)
// host) while the test acts and measures in wall time. An idle "sim" loop
// jumps its clock to the next deadline at once, so timers fire before
// their delay has passed on the wall clock (Timers, ConnTimers,
// TimersAfterIdleWait), an hour's timer the test keeps pending fires
// (TimerScheduledEarlier, WrongGoroutine/Blocked), and a close waiting for
// the peer meets its CloseTimeout before the peer acts (ClosePolicy/
// Graceful*, HangupWhilePaused). The suite's host for "sim-foreign"
// sleeps for real and never moves the clock, so there no timer ever
// fires. core's simclock tests cover the core on these backends instead.
func TestConformance(t *testing.T) {
	for _, name := range []string{simloop.Name, simloop.ForeignName} {
		t.Run(name, func(t *testing.T) { conformance.RunContract(t, name) })
	}
}
