//go:build linux

package conformance

import "golang.org/x/sys/unix"

// threadID names the calling thread, for interruptThread.
func threadID() int { return unix.Gettid() }

// interruptThread sends Go's own preemption signal (SIGURG, which the
// runtime tolerates unasked) to the thread tid, so that a system call it is
// blocked in returns EINTR.
func interruptThread(tid int) error { return unix.Tgkill(unix.Getpid(), tid, unix.SIGURG) }
