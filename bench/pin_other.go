//go:build unix && !linux

package main

import (
	"errors"
	"runtime"
	"syscall"
	"time"
)

func pinProcess(cpus []int) error {
	if len(cpus) == 0 {
		return nil
	}
	return errors.New("CPU pinning is implemented on Linux only")
}

func affinity() ([]int, error) { return nil, errors.New("not supported") }

// maxRSSKB returns ru_maxrss in KiB (BSDs report KiB; macOS bytes).
func maxRSSKB(ru *syscall.Rusage) int64 {
	if runtime.GOOS == "darwin" {
		return ru.Maxrss / 1024
	}
	return ru.Maxrss
}

func childSysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func kernel() string { return runtime.GOOS + "/" + runtime.GOARCH }

type cpuTime struct{ busy, steal time.Duration }

func systemCPU() (cpuTime, bool) { return cpuTime{}, false }
