//go:build unix

package main

// Exact system call counts over the measured window, for every server:
// perf stat counting the syscall tracepoints of the server child. Unlike
// strace it does not stop the process at each call, so the server keeps
// the batching it has under load; it costs the kernel a little per call.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// perfSyscalls are the system calls perf counts one by one (where the
// kernel has a tracepoint for them); the rest show up only in the total.
var perfSyscalls = []string{
	"read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
	"epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "poll", "ppoll", "timerfd_settime",
	"futex", "nanosleep", "clock_nanosleep", "sched_yield", "getpid", "tgkill", "rt_sigreturn",
	"madvise", "mmap", "munmap", "accept4", "close", "setsockopt", "eventfd2", "splice", "pipe2", "fcntl",
}

// syscallCount is how many system calls a server made: the total and,
// where known, by name.
type syscallCount struct {
	Total uint64            `json:"total"`
	Calls map[string]uint64 `json:"calls"`
}

// perfCounter is a perf stat process attached to a server child, started
// disabled and switched on and off through its control FIFOs, which
// acknowledge each command; so its window is known to the round trip.
type perfCounter struct {
	cmd      *exec.Cmd
	dir      string
	out      string
	ctl, ack *os.File
	ackr     *bufio.Reader
	stderr   *tailBuffer
}

func perfEvents() []string {
	ev := []string{"raw_syscalls:sys_enter"}
	for _, name := range perfSyscalls {
		for _, root := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
			if _, err := os.Stat(filepath.Join(root, "events/syscalls/sys_enter_"+name)); err == nil {
				ev = append(ev, "syscalls:sys_enter_"+name)
				break
			}
		}
	}
	return ev
}

func startPerf(perfPath string, pid int) (*perfCounter, error) {
	dir, err := os.MkdirTemp("", "plugloop-bench-perf-")
	if err != nil {
		return nil, err
	}
	p := &perfCounter{dir: dir, out: filepath.Join(dir, "stat.csv"), stderr: &tailBuffer{max: 2 << 10}}
	ctl, ack := filepath.Join(dir, "ctl"), filepath.Join(dir, "ack")
	for _, f := range []string{ctl, ack} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			p.cleanup()
			return nil, err
		}
	}
	// O_RDWR: opening a FIFO so never blocks, whether or not perf came up.
	if p.ctl, err = os.OpenFile(ctl, os.O_RDWR, 0); err == nil {
		p.ack, err = os.OpenFile(ack, os.O_RDWR, 0)
	}
	if err != nil {
		p.cleanup()
		return nil, err
	}
	p.ackr = bufio.NewReader(p.ack)
	args := []string{"stat", "-x", ",", "-o", p.out, "-D", "-1", "--control", "fifo:" + ctl + "," + ack}
	for _, e := range perfEvents() {
		args = append(args, "-e", e)
	}
	args = append(args, "-p", strconv.Itoa(pid))
	p.cmd = exec.Command(perfPath, args...)
	p.cmd.Stderr = p.stderr
	p.cmd.SysProcAttr = childSysProcAttr()
	if err := p.cmd.Start(); err != nil {
		p.cleanup()
		return nil, err
	}
	return p, nil
}

// command sends enable or disable and waits for perf's ack.
func (p *perfCounter) command(ctx context.Context, c string) error {
	if _, err := p.ctl.WriteString(c + "\n"); err != nil {
		return err
	}
	p.ack.SetReadDeadline(time.Now().Add(controlTimeout))
	line, err := p.ackr.ReadString('\n')
	if err != nil {
		return p.failure(fmt.Errorf("perf %s: %w", c, err))
	}
	// perf writes the ack with its C string terminator.
	if strings.Trim(line, "\x00 \n") != "ack" {
		return p.failure(fmt.Errorf("perf %s: answered %q", c, line))
	}
	return ctx.Err()
}

func (p *perfCounter) failure(err error) error {
	if s := p.stderr.String(); s != "" {
		return fmt.Errorf("%w (perf: %s)", err, s)
	}
	return err
}

// finish stops perf and returns its counts.
func (p *perfCounter) finish() (*syscallCount, error) {
	defer p.cleanup()
	p.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-done
		return nil, errors.New("perf did not exit")
	}
	b, err := os.ReadFile(p.out)
	if err != nil {
		return nil, p.failure(err)
	}
	return parsePerf(string(b))
}

// abort kills perf, if it runs, and removes its files.
func (p *perfCounter) abort() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	p.cleanup()
}

func (p *perfCounter) cleanup() {
	if p.ctl != nil {
		p.ctl.Close()
	}
	if p.ack != nil {
		p.ack.Close()
	}
	os.RemoveAll(p.dir)
}

// parsePerf reads perf stat -x, output: count,unit,event,...
func parsePerf(text string) (*syscallCount, error) {
	s := &syscallCount{Calls: map[string]uint64{}}
	found := false
	for _, line := range strings.Split(text, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || strings.HasPrefix(line, "#") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(f[0]), 10, 64)
		if err != nil {
			continue // <not counted>, <not supported>
		}
		switch ev := f[2]; {
		case ev == "raw_syscalls:sys_enter":
			s.Total, found = n, true
		case strings.HasPrefix(ev, "syscalls:sys_enter_"):
			if n > 0 {
				s.Calls[strings.TrimPrefix(ev, "syscalls:sys_enter_")] = n
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("no syscall count in perf output %q", strings.TrimSpace(text))
	}
	var named uint64
	for _, n := range s.Calls {
		named += n
	}
	if s.Total > named {
		s.Calls["other"] = s.Total - named
	}
	return s, nil
}

// enablePerf attaches perf stat to pid and switches counting on; before, if
// not nil, runs right before the switch so a caller can sample its own
// counters there. On failure nothing is left running.
func enablePerf(ctx context.Context, path string, pid int, before func()) (*perfCounter, error) {
	pc, err := startPerf(path, pid)
	if err == nil {
		if before != nil {
			before()
		}
		err = pc.command(ctx, "enable")
	}
	if err != nil {
		if pc != nil {
			pc.abort()
		}
		return nil, err
	}
	return pc, nil
}

// stop switches counting off and returns what perf counted; after, if not
// nil, runs right after the switch, before perf is waited for.
func (p *perfCounter) stop(ctx context.Context, after func()) (*syscallCount, error) {
	err := p.command(ctx, "disable")
	if after != nil {
		after()
	}
	if err != nil {
		return nil, err
	}
	return p.finish()
}
