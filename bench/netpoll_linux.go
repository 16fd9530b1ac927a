//go:build linux && (amd64 || arm64 || loong64)

package main

// cloudwego/netpoll builds only on Linux here (v0.7.2 needs EVFILT_USER on
// the BSDs, which NetBSD and OpenBSD lack), so its native server and
// plugloop's adapter onto it are linked in on Linux only.

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/cloudwego/netpoll"
	"github.com/plugloop/plugloop/internal/sys"
	"golang.org/x/sys/unix"

	_ "github.com/plugloop/plugloop/evlib_netpoll"
)

// startNetpoll is cloudwego/netpoll's echo: one poller, OnRequest moves
// whatever the Reader holds to the Writer and flushes. With floor (the
// netpoll-floor server) it is the cheapest echo on netpoll's reads found:
// no OnRequest (a pool task per burst of input) but a goroutine per
// connection parked in Peek, netpoll's blocking style, writing with
// write(2) on the fd as plugloop's adapter does, leaving only what the
// socket did not take to the Writer, and releasing input as the adapter
// does, when the next arrives.
func startNetpoll(floor bool) (string, error) {
	if err := netpoll.Configure(netpoll.Config{PollerNum: 1, LoggerOutput: discard{}}); err != nil {
		return "", err
	}
	ln, err := netpoll.CreateListener("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	var loop netpoll.EventLoop
	if floor {
		loop, err = netpoll.NewEventLoop(nil, netpoll.WithOnConnect(func(ctx context.Context, c netpoll.Connection) context.Context {
			go netpollFloorConn(c)
			return ctx
		}))
	} else {
		loop, err = netpoll.NewEventLoop(func(_ context.Context, c netpoll.Connection) error {
			r := c.Reader()
			n := r.Len()
			if n == 0 {
				return nil
			}
			buf, err := r.Next(n)
			if err != nil {
				return err
			}
			return netpollEcho(c, buf, -1, true)
		})
	}
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

// netpollFloorConn is the floor server's goroutine for one connection.
func netpollFloorConn(c netpoll.Connection) {
	defer c.Close()
	r := c.Reader()
	fd := -1
	if f, ok := c.(interface{ Fd() int }); ok {
		fd = f.Fd()
	}
	for {
		if _, err := r.Peek(1); err != nil {
			return
		}
		// Release what the last round took only now, with input waiting,
		// as plugloop's adapter does: netpoll's Release of an emptied
		// buffer takes a fresh node for every message once one filled.
		r.Release()
		buf, err := r.Next(r.Len())
		if err != nil || netpollEcho(c, buf, fd, false) != nil {
			return
		}
	}
}

// netpollEcho sends buf back, with a raw write(2) on fd unless it is -1,
// through netpoll's Writer for what that did not take, and releases the
// input if release says so.
func netpollEcho(c netpoll.Connection, buf []byte, fd int, release bool) error {
	if fd >= 0 {
		k, err := sys.Write(fd, buf)
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			return err
		}
		buf = buf[max(k, 0):]
	}
	if len(buf) > 0 {
		w := c.Writer()
		if _, err := w.WriteBinary(buf); err != nil {
			return err
		}
		// WriteBinary references buf: flush before releasing it.
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if release {
		return c.Reader().Release()
	}
	return nil
}
