//go:build linux

package main

import "golang.org/x/sys/unix"

// processCPU is the CPU time (user and system, in nanoseconds) process
// pid has used so far, read from its scheduler clock: this process can
// sample it at the very moment it samples the load's counters, where the
// child's own getrusage waits for the child's one P (clock_getcpuclockid's
// encoding: ^pid << 3, CPUCLOCK_SCHED).
func processCPU(pid int) (int64, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^uint32(pid)<<3|2), &ts); err != nil {
		return 0, false
	}
	return ts.Nano(), true
}
