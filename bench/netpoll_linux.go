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
// whatever the Reader holds to the Writer and flushes. With rawWrite (the
// netpoll-floor server) OnRequest writes it with write(2) on the fd
// instead, as plugloop's adapter does, and leaves only what the socket did
// not take to the Writer.
func startNetpoll(rawWrite bool) (string, error) {
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
		if rawWrite {
			if fd, ok := c.(interface{ Fd() int }); ok {
				k, err := sys.Write(fd.Fd(), buf)
				if err != nil && !errors.Is(err, unix.EAGAIN) {
					return err
				}
				if buf = buf[max(k, 0):]; len(buf) == 0 {
					return r.Release()
				}
			}
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
