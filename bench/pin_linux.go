package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pinProcess sets the CPU affinity of every thread of this process to cpus.
// sched_setaffinity works per thread, and the Go runtime has started
// several by the time main runs; threads created later inherit the mask of
// the thread that creates them, so a second sweep catches any that raced
// with the first.
func pinProcess(cpus []int) error {
	if len(cpus) == 0 {
		return nil
	}
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return unix.SchedSetaffinity(0, &set)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("sched_setaffinity(%d): %w", tid, err)
			}
		}
	}
	return nil
}

// affinity returns the CPUs the calling thread may run on.
func affinity() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, err
	}
	var cpus []int
	for i := range 1024 {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus, nil
}

// maxRSSKB returns the process's own peak resident set in KiB: VmHWM, its
// memory's high-water mark. Not ru_maxrss: exec keeps the peak of the
// memory it replaced in that, and os/exec starts a child on its parent's
// memory (vfork), so every server child reported at least the bench's own
// peak (15.6 MB for most servers at 1,000 connections). ru_maxrss only if
// /proc cannot tell.
func maxRSSKB(ru *syscall.Rusage) int64 {
	if kb, err := procStatusKB(os.Getpid(), "VmHWM"); err == nil {
		return kb
	}
	return int64(ru.Maxrss) // KiB on Linux (int32 on 32-bit systems)
}

// childSysProcAttr puts a server child in its own process group (so a
// terminal's Ctrl-C reaches only the bench, which then stops the child in
// order) and has the kernel kill it should the bench die.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// kernel describes the running kernel, like uname -srm.
func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "linux (uname failed: " + err.Error() + ")"
	}
	return unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) +
		" " + unix.ByteSliceToString(u.Machine[:])
}

// cpuTime is the busy and stolen time of all CPUs together, from
// /proc/stat.
type cpuTime struct{ busy, steal time.Duration }

// systemCPU reads the machine-wide CPU time, used to tell whether other
// processes competed with the bench. ok is false where it is unknown.
func systemCPU() (t cpuTime, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return t, false
	}
	var v [8]int64
	for i := range v {
		v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
	}
	const tick = time.Second / 100 // USER_HZ
	t.busy = time.Duration(v[0]+v[1]+v[2]+v[5]+v[6]) * tick
	t.steal = time.Duration(v[7]) * tick
	return t, true
}
