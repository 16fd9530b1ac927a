//go:build unix

// Command extpoll embeds plugloop in a poll loop the application owns: one
// goroutine runs unix.Poll over its own fd (stdin lines are echoed back
// with a prefix) and plugloop's echo server, with the raw foreign-mode API.
//
//	go run ./examples/extpoll -addr 127.0.0.1:7681
//	nc 127.0.0.1 7681
//
// plugloop tells the loop what to watch through the poll-fd callbacks
// (ADD/DEL/CHANGE_MODE_POLL_FD); the loop sleeps at most
// Thread.ServiceAdjustTimeout, offers every ready pollfd to
// Thread.ServiceFD (which zeroes Revents of the fds it handled) and then
// calls Thread.Service(0). foreign.PollSet.Poll is the short form of the
// same loop.
//
// The program is the loop, so it runs on the foreign backend only:
// PLUGLOOP_EVLIB naming another backend (one with a loop of its own) is
// refused with an error.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"
	"golang.org/x/sys/unix"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7681", "listen address HOST:PORT")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "extpoll:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	// The application's watch set: its own fds first, then plugloop's,
	// maintained from the poll-fd callbacks of the first protocol.
	fds := []unix.PollFd{{Fd: 0, Events: unix.POLLIN}} // stdin
	own := 1
	proto := echo.Protocol("echo")
	inner := proto.Callback
	proto.Callback = func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonAddPollFD:
			fds = append(fds, unix.PollFd{Fd: int32(ev.Poll.FD), Events: foreign.PollEvents(ev.Poll.Events)})
		case core.ReasonDelPollFD:
			fds = slices.DeleteFunc(fds, func(p unix.PollFd) bool { return int(p.Fd) == ev.Poll.FD })
		case core.ReasonChangeModePollFD:
			for i := range fds {
				if int(fds[i].Fd) == ev.Poll.FD {
					fds[i].Events = foreign.PollEvents(ev.Poll.Events)
				}
			}
		}
		return inner(ev)
	}
	ctx, err := core.New(core.Info{EventLib: foreign.Name, Protocols: []core.Protocol{proto}})
	if err != nil {
		return err
	}
	defer ctx.Destroy()
	if ctx.Caps()&evlib.CapAppDriven == 0 {
		// PLUGLOOP_EVLIB chose a backend that waits itself: this loop
		// would service it only between its own waits.
		return fmt.Errorf("%s=%s: this example is the application's own loop and runs only on the %s backend", evlib.EnvVar, ctx.EventLib(), foreign.Name)
	}
	ln, err := ctx.Listen("tcp", addr, "echo")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "extpoll: echo on %s inside the application's poll loop; stdin lines come back prefixed; ^C stops\n", ln.Addr())

	// The application's own signal handling (plugloop installs none): a
	// pipe the loop watches too.
	var sigp [2]int
	if err := unix.Pipe(sigp[:]); err != nil {
		return err
	}
	fds = slices.Insert(fds, own, unix.PollFd{Fd: int32(sigp[0]), Events: unix.POLLIN})
	own++
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; unix.Write(sigp[1], []byte{1}) }()

	th := ctx.Thread(0)
	// The whole loop. (With foreign.PollSet: set.Poll(th, mine, time.Second).)
	for {
		d := th.ServiceAdjustTimeout(time.Second) // rounded up: a timer due in 300 µs must not spin on zero waits
		if _, err := unix.Poll(fds, int((d+time.Millisecond-1)/time.Millisecond)); err != nil && err != unix.EINTR {
			return err
		}
		ready := slices.Clone(fds) // callbacks may change fds meanwhile
		for i := own; i < len(ready); i++ {
			if ready[i].Revents != 0 && th.ServiceFD(&ready[i]) == core.ErrDestroyed {
				return nil
			}
		}
		if th.Service(0) == core.ErrDestroyed {
			return nil
		}
		if fds[1].Revents != 0 { // SIGINT or SIGTERM
			fmt.Fprintln(os.Stderr, "extpoll: stopping")
			return nil
		}
		if fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0 && serveStdin() != nil {
			fds[0].Fd = -1 // stdin ended: poll ignores negative fds
		}
	}
}

// serveStdin echoes what stdin holds (the application's own work).
func serveStdin() error {
	var b [4096]byte
	n, err := unix.Read(0, b[:])
	if n <= 0 {
		return fmt.Errorf("stdin ended: %v", err)
	}
	fmt.Printf("app: %s", b[:n])
	return nil
}
