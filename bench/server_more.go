//go:build unix

package main

// More servers: plugloop's foreign backend hosted by a unix.Poll loop of
// the child's own, and cloudwego/netpoll's native echo.

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"

	// The adapters onto the peers' own pollers, as plugloop backends.
	_ "github.com/plugloop/plugloop/evlib_gnet"
)

const (
	netpollName = "netpoll"
	// netpollFloorName is the cheapest echo found on netpoll's reads (see
	// startNetpoll): what netpoll's reading and hand-off cost under any
	// adapter (opt-in).
	netpollFloorName = "netpoll-floor"
	rawName          = "bare-epoll"
	// targetName stands for the external server -target names.
	targetName = "target"
)

// startForeign serves internal/echo on the foreign backend: plugloop waits
// for nothing; the child's own loop polls plugloop's fds (PollSet) and
// hands it what is ready, as an application embedding plugloop would.
func startForeign() (string, func() core.Stats, error) {
	set := new(foreign.PollSet)
	ctx, addr, err := echoContext(foreign.Name, set.Protocol(echo.Protocol("echo")))
	if err != nil {
		return "", nil, err
	}
	t := ctx.Thread(0)
	go func() {
		runtime.LockOSThread()
		for {
			if err := set.Poll(t, nil, -1); err != nil {
				if errors.Is(err, core.ErrDestroyed) {
					return
				}
				fmt.Fprintln(os.Stderr, "foreign host loop:", err)
				os.Exit(1)
			}
		}
	}()
	return addr, ctx.Stats, nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// raiseFDLimit sets the soft RLIMIT_NOFILE to the hard limit (Go's runtime
// usually has already) and returns the limit now in force.
func raiseFDLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return uint64(rl.Cur)
}
