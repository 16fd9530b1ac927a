//go:build unix

package main

// More servers: plugloop's foreign backend hosted by a unix.Poll loop of
// the child's own, and cloudwego/netpoll's native echo.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"syscall"

	"github.com/cloudwego/netpoll"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"

	// The adapters onto the peers' own pollers, as plugloop backends.
	_ "github.com/plugloop/plugloop/evlib_gnet"
	_ "github.com/plugloop/plugloop/evlib_netpoll"
)

const (
	netpollName = "netpoll"
	rawName     = "bare-epoll"
	// targetName stands for the external server -target names.
	targetName = "target"
)

// startForeign serves internal/echo on the foreign backend: plugloop waits
// for nothing; the child's own loop polls plugloop's fds (PollSet) and
// hands it what is ready, as an application embedding plugloop would.
func startForeign() (string, func() core.Stats, error) {
	set := new(foreign.PollSet)
	ctx, err := core.New(core.Info{
		EventLib:  foreign.Name,
		Protocols: []core.Protocol{set.Protocol(echo.Protocol("echo"))},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return "", nil, err
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	if err != nil {
		ctx.Destroy()
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
	return ln.Addr().String(), ctx.Stats, nil
}

// startNetpoll is cloudwego/netpoll's echo: one poller, OnRequest moves
// whatever the Reader holds to the Writer and flushes.
func startNetpoll() (string, error) {
	if err := netpoll.Configure(netpoll.Config{PollerNum: 1, LoggerOutput: discard{}}); err != nil {
		return "", err
	}
	ln, err := netpoll.CreateListener("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	loop, err := netpoll.NewEventLoop(func(_ context.Context, c netpoll.Connection) error {
		r, w := c.Reader(), c.Writer()
		n := r.Len()
		if n == 0 {
			return nil
		}
		buf, err := r.Next(n)
		if err != nil {
			return err
		}
		if _, err := w.WriteBinary(buf); err != nil {
			return err
		}
		// WriteBinary references buf: flush before releasing it.
		if err := w.Flush(); err != nil {
			return err
		}
		return r.Release()
	})
	if err != nil {
		ln.Close()
		return "", err
	}
	go func() {
		if err := loop.Serve(ln); err != nil {
			fmt.Fprintln(os.Stderr, "netpoll Serve:", err)
		}
		os.Exit(1)
	}()
	return ln.Addr().String(), nil
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
