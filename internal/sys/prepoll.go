package sys

import (
	"runtime"
	"time"
)

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

// Wait makes a backend's wait for at most timeout (< 0: no limit) under
// the policy: a zero-timeout look first when it is likely to pay off, then,
// if that found nothing, a yield and the wait that may block.
func (p *Prepoll) Wait(timeout time.Duration, wait func(time.Duration) (int, error)) (int, error) {
	n, err := 0, error(nil)
	if p.Look(timeout != 0) {
		n, err = wait(0)
		p.Looked(n)
	}
	if n == 0 && err == nil {
		if timeout != 0 {
			BeforeBlock()
		}
		n, err = wait(timeout)
		p.Waited(n)
	}
	return n, err
}

// Msec converts a wait timeout to the milliseconds poll(2) and epoll_wait
// take: negative means no limit (-1), and a positive timeout is rounded up,
// so a timer due in 300 µs waits 1 ms instead of spinning on zero waits.
func Msec(d time.Duration) int {
	switch {
	case d < 0:
		return -1
	case d == 0:
		return 0
	case d > time.Duration(1<<31-1)*time.Millisecond:
		return 1<<31 - 1
	}
	return int((d + time.Millisecond - 1) / time.Millisecond)
}
