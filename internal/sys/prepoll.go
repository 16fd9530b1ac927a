package sys

import "runtime"

// Prepoll decides when a backend looks for events without blocking before it
// blocks. After a batch, more events are often ready a moment later on a
// loaded loop, and a zero-timeout wait that finds them is cheaper than a
// blocking one that parks the thread. On a lightly loaded loop the look
// finds nothing and only adds a system call per wait, so it stops after the
// first empty look and resumes once a blocking wait returns several events.
type Prepoll struct {
	busy bool // the last wait returned events
	off  bool // the last look found nothing
}

// Look reports whether to make a zero-timeout wait first, given that the
// caller may block.
func (p *Prepoll) Look(mayBlock bool) bool { return mayBlock && p.busy && !p.off }

// Looked records what a zero-timeout look returned.
func (p *Prepoll) Looked(n int) {
	p.busy = n > 0
	p.off = n == 0
}

// Waited records what a wait that may have blocked returned.
func (p *Prepoll) Waited(n int) {
	p.busy = n > 0
	if n >= 2 {
		p.off = false
	}
}

// BeforeBlock is called right before a wait that may block. A service loop
// that does all its I/O with raw system calls never enters the scheduler;
// the runtime then preempts it by force and, from then on, hands its P away
// and wakes another thread on every blocking wait. A yield here avoids that
// (gnet's loop does the same), and costs nothing when nothing else runs.
func BeforeBlock() { runtime.Gosched() }
