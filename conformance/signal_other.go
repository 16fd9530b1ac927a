//go:build unix && !linux

package conformance

import "golang.org/x/sys/unix"

// threadID: elsewhere a thread cannot be named through x/sys.
func threadID() int { return 0 }

// interruptThread sends SIGURG (Go's own preemption signal, which the
// runtime tolerates unasked) to the process: any of its threads may get
// it, so a wait is interrupted only sometimes.
func interruptThread(int) error { return unix.Kill(unix.Getpid(), unix.SIGURG) }
