//go:build unix

package core

import "github.com/plugloop/plugloop/evlib"

// ReportReady reports fd ready for ev as the thread's backend would
// (evlib.Sink.Ready), for tests that fake a backend's report.
func (t *Thread) ReportReady(fd int, ev evlib.Events) { (*sink)(t).Ready(fd, ev) }

// OnEnterWaits has f called when Run starts waiting for a loop-only call
// of another goroutine, until the test ends.
func OnEnterWaits(t interface{ Cleanup(func()) }, f func()) {
	enterWaits = f
	t.Cleanup(func() { enterWaits = nil })
}
