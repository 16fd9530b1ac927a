//go:build unix

package conformance

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/goid"
)

// runLoop drives a RunLoop for one service thread: Run on a goroutine of
// its own for the harness' life, parked in a task of the suite's (hold)
// between passes and runs. Unless noted, its fields are touched on the
// loop goroutine only, in the hooks and in the suite's tasks.
type runLoop struct {
	r    *hostRun
	loop RunLoop
	cmds chan runCmd   // to the parked loop
	done chan struct{} // closed once Run returned
	err  error         // what Run returned, read after done
	tick atomic.Bool   // a tickTask is queued (any goroutine)
	late atomic.Bool   // after destroy: the hang guard ran out (any goroutine)

	mode   runMode
	reply  chan error // answered when the loop parks next
	result error      // the answer
	cctx   context.Context
	timer  *time.Timer // a pass's timeout
	guard  *time.Timer // after destroy: the hang guard
	seen   bool        // after destroy: the loop served its own fd since
}

type runMode int

const (
	parked       runMode = iota // in hold, or about to be
	passing                     // one pass, until the loop's own fd comes
	running                     // a run, until destroy or its context ends
	afterDestroy                // a run found plugloop destroyed: the loop must carry on
	stopped                     // the application stops its loop
)

type runCmd struct {
	kind    runCmdKind
	timeout time.Duration   // cmdPass
	cctx    context.Context // cmdRun
	reply   chan error      // cmdPass, cmdRun: the end of the pass or run
}

type runCmdKind int

const (
	cmdPass runCmdKind = iota
	cmdRun
	cmdStop
)

func (l *runLoop) problem(format string, args ...any) { l.r.problem(format, args...) }

// start runs the loop on a goroutine of its own and waits until it is
// parked, before core.New.
func (l *runLoop) start() {
	t := l.r.h.t
	l.cmds, l.done = make(chan runCmd), make(chan struct{})
	parked := make(chan error, 1)
	l.reply = parked
	if err := l.loop.Do(l.hold); err != nil {
		t.Fatalf("conformance: host %q: queueing the first task: %v", l.r.host.Name, err)
	}
	go func() {
		l.r.runG.Store(goid.ID())
		l.err = l.loop.Run(LoopHooks{Own: l.own, Plugloop: l.plugloop})
		close(l.done)
	}()
	select {
	case <-parked:
	case <-l.done:
		t.Fatalf("conformance: host %q: Run returned %v before running its first task", l.r.host.Name, l.err)
	case <-timeAfterHang():
		t.Fatalf("conformance: host %q: the loop did not run its first task (hang guard)", l.r.host.Name)
	}
}

// hold is the suite's task that parks the loop until the next command.
func (l *runLoop) hold() (stop bool) {
	if l.reply != nil {
		l.reply <- l.result
		l.reply, l.result = nil, nil
	}
	l.mode = parked
	cmd := <-l.cmds
	switch cmd.kind {
	case cmdPass:
		l.reply = cmd.reply
		timeout := l.r.th.ServiceAdjustTimeout(cmd.timeout)
		l.r.waits.Add(1)
		l.mode = passing
		switch {
		case timeout == 0:
			l.r.kick()
		case timeout > 0:
			l.timer = time.AfterFunc(timeout, l.r.kick)
		}
	case cmdRun:
		l.reply, l.cctx = cmd.reply, cmd.cctx
		l.mode = running
		l.step()
	default:
		l.mode = stopped
		return true
	}
	return false
}

// park ends a pass or a run: the suite's next task parks the loop and
// answers then, once nothing of plugloop's runs on it any more.
func (l *runLoop) park(result error) {
	l.mode, l.result = parked, result
	if err := l.loop.Do(l.hold); err != nil {
		l.problem("queueing the task that parks the loop: %v", err)
	}
}

// own is the loop's callback for its own fd.
func (l *runLoop) own(int) {
	r := l.r
	r.drain()
	switch l.mode {
	case passing:
		if l.timer != nil {
			l.timer.Stop()
			l.timer = nil
		}
		var result error
		if r.service0() {
			result = core.ErrDestroyed
		}
		l.park(result)
	case running:
		l.waitAhead()
		l.step()
	case afterDestroy:
		l.seen = true
		switch {
		case r.read.Load() >= r.wrote.Load():
			l.finish()
		case l.late.Load():
			l.problem("after destroy the loop no longer delivers its own fd: read %d of %d bytes", r.read.Load(), r.wrote.Load())
			l.finish()
		}
	}
}

// plugloop is the loop's callback for an fd it hands to plugloop next.
func (l *runLoop) plugloop(fd int) {
	switch l.mode {
	case passing:
		l.r.kick() // the pass ends after this event, as a wait returns
	case running:
		l.waitAhead()
	case afterDestroy, stopped:
		// An event harvested before destroy may still be on its way; once
		// the loop served its own fd after destroy, its waits are new.
		if l.seen {
			l.problem("after destroy the loop reported fd %d, which is not its own", fd)
		}
	}
}

// step is a run's work on each of the loop's own events: end the run if
// its context ended, else Service(0), which tells whether plugloop is
// gone.
func (l *runLoop) step() {
	if err := l.cctx.Err(); err != nil {
		l.park(err)
		return
	}
	if l.r.service0() {
		l.destroyed()
	}
}

// destroyed is checklist 26 and 27 from the application's side, as
// afterDestroy: once plugloop is gone the loop still serves its own fd and
// holds nothing of plugloop's; then the application stops it.
func (l *runLoop) destroyed() {
	r := l.r
	select {
	case <-r.h.ctx.Done():
	case <-timeAfterHang():
		l.problem("Service reported ErrDestroyed but Done was not closed (hang guard)")
		l.finish()
		return
	}
	r.checkEmpty()
	l.mode, l.seen = afterDestroy, false
	l.guard = time.AfterFunc(hang, func() { l.late.Store(true); r.kick() })
	r.kick()
}

// finish ends a run after destroy: the application stops its loop.
func (l *runLoop) finish() {
	if l.guard != nil {
		l.guard.Stop()
	}
	l.r.checkEmpty()
	l.mode = stopped
	if err := l.loop.Do(func() bool { return true }); err != nil {
		l.problem("queueing the task that stops the loop: %v", err)
	}
	l.reply <- nil
	l.reply = nil
}

// waitAhead counts the wait the loop goes back to once what it does now
// is done: a task of the suite's, queued behind it, counts it. Any
// goroutine may call it.
func (l *runLoop) waitAhead() {
	if l.tick.CompareAndSwap(false, true) {
		if err := l.loop.Do(l.tickTask); err != nil {
			l.tick.Store(false)
			l.problem("queueing a task: %v", err)
		}
	}
}

func (l *runLoop) tickTask() bool {
	l.tick.Store(false)
	l.r.waits.Add(1)
	if l.r.iter++; l.r.iter%16 == 0 && l.mode == running && !l.r.quiet.Load() {
		l.r.kick() // the application's own traffic, now and then
	}
	return false
}

// send hands the parked loop a command; it waits until the loop parks.
func (l *runLoop) send(cmd runCmd) error {
	select {
	case l.cmds <- cmd:
		return nil
	case <-l.done:
		return fmt.Errorf("conformance: host %q: the application's loop has stopped (Run returned %v)", l.r.host.Name, l.err)
	case <-timeAfterHang():
		return fmt.Errorf("conformance: host %q: the application's loop did not park (hang guard)", l.r.host.Name)
	}
}

// pass is one pass of the loop, from the calling goroutine.
func (l *runLoop) pass(timeout time.Duration) (destroyed bool, err error) {
	reply := make(chan error, 1)
	if err := l.send(runCmd{kind: cmdPass, timeout: timeout, reply: reply}); err != nil {
		return false, err
	}
	select {
	case err = <-reply:
	case <-timeAfterHang():
		return false, fmt.Errorf("conformance: host %q: a pass of the application's loop did not end (hang guard)", l.r.host.Name)
	}
	if errors.Is(err, core.ErrDestroyed) {
		return true, nil
	}
	return false, err
}

// run lets the loop run until plugloop is destroyed (nil, once the loop
// stopped after its checks) or cctx ends (cctx.Err(), the loop parked).
func (l *runLoop) run(cctx context.Context) error {
	select {
	case <-l.done:
		select {
		case <-l.r.h.ctx.Done():
			// The loop stopped after plugloop was destroyed, having
			// made its checks: nothing is left to run.
			return nil
		default:
		}
	default:
	}
	reply := make(chan error, 1)
	if err := l.send(runCmd{kind: cmdRun, cctx: cctx, reply: reply}); err != nil {
		return err
	}
	defer context.AfterFunc(cctx, l.r.kick)()
	if err := <-reply; err != nil {
		return err
	}
	select {
	case <-l.done:
	case <-timeAfterHang():
		return fmt.Errorf("conformance: host %q: Run did not return after the task that stops it (hang guard)", l.r.host.Name)
	}
	return l.err
}

// stop stops the loop if it still runs, from the test goroutine, before
// the loop is closed.
func (l *runLoop) stop() {
	t := l.r.h.t
	select {
	case <-l.done:
	default:
		if err := l.send(runCmd{kind: cmdStop}); err != nil {
			t.Errorf("%v", err)
			return
		}
		select {
		case <-l.done:
		case <-timeAfterHang():
			t.Errorf("conformance: host %q: Run did not return after the task that stops it (hang guard)", l.r.host.Name)
			return
		}
	}
	if l.err != nil {
		t.Errorf("conformance: host %q: Run: %v", l.r.host.Name, l.err)
	}
}

// whileHeld calls f on the calling goroutine while the loop runs a task of
// the suite's, outside plugloop's code: the thread is idle for the call to
// take, and its release wakes the loop's next wait.
func (l *runLoop) whileHeld(f func() error) error {
	held, release := make(chan struct{}), make(chan struct{})
	if err := l.loop.Do(func() bool { close(held); <-release; return false }); err != nil {
		return fmt.Errorf("conformance: host %q: queueing a task: %w", l.r.host.Name, err)
	}
	defer close(release)
	select {
	case <-held:
	case <-timeAfterHang():
		return fmt.Errorf("conformance: host %q: the loop did not run a task (hang guard)", l.r.host.Name)
	}
	return f()
}
