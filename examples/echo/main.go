//go:build unix

// Command echo serves raw TCP (or unix-socket) echo on any plugloop backend,
// with writable callbacks and rx flow control, until SIGINT or SIGTERM.
//
//	go run ./examples/echo -evlib epoll -addr 127.0.0.1:7681
//	nc 127.0.0.1 7681
//
// -evlib takes any backend name (see -list); PLUGLOOP_EVLIB overrides it.
// -threads N asks for N service threads (core.Info.CountThreads): accepted
// connections go to the least-loaded one; the program prints how many it
// got. Try several at once:
//
//	go run ./examples/echo -threads 3 -v
//	for i in 1 2 3 4; do (echo hi $i | nc -q1 127.0.0.1 7681 &); done
//
// With -evlib foreign the program runs its own unix.Poll loop through
// foreign.PollSet and plugloop only services what that loop hands it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	_ "github.com/plugloop/plugloop/evlib_gnet"    // -evlib gnet
	_ "github.com/plugloop/plugloop/evlib_netpoll" // -evlib netpoll (Linux)
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"
)

func main() {
	lib := flag.String("evlib", "", "event-loop backend (default: the best available)")
	addr := flag.String("addr", "127.0.0.1:7681", "listen address: HOST:PORT, or a path for a unix socket")
	list := flag.Bool("list", false, "list the backends and exit")
	verbose := flag.Bool("v", false, "log connections")
	threads := flag.Int("threads", 1, "service threads (core.Info.CountThreads)")
	flag.Parse()
	if *list {
		listBackends()
		return
	}
	if err := run(*lib, *addr, *threads, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func run(lib, addr string, threads int, verbose bool) error {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	proto := echo.Protocol("echo")
	if verbose {
		inner := proto.Callback
		proto.Callback = func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				log.Info("open", "fd", ev.Conn.FD(), "peer", ev.Conn.RemoteAddr(), "thread", ev.Thread.Index())
			case core.ReasonRawClose:
				log.Info("close", "fd", ev.Conn.FD(), "why", ev.Err)
			}
			return inner(ev)
		}
	}
	// -evlib foreign: this program's own poll loop drives plugloop; the
	// PollSet keeps its watch set from the poll-fd callbacks.
	var set *foreign.PollSet
	if lib == foreign.Name || os.Getenv(evlib.EnvVar) == foreign.Name {
		if threads > 1 {
			// Each thread would need an application loop of its own.
			return fmt.Errorf("-threads %d: the foreign loop of this example drives one service thread", threads)
		}
		set = new(foreign.PollSet)
		proto = set.Protocol(proto)
	}
	ctx, err := core.New(core.Info{EventLib: lib, Logger: log, CountThreads: threads, Protocols: []core.Protocol{proto}})
	if err != nil {
		return err
	}
	defer ctx.Destroy()

	network := "tcp"
	if strings.Contains(addr, "/") {
		network = "unix"
	}
	ln, err := ctx.Listen(network, addr, "echo")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "echo: serving %s on %s with the %s backend, %d service thread(s); ^C stops\n", network, ln.Addr(), ctx.EventLib(), ctx.CountThreads())

	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if set != nil && ctx.Caps()&evlib.CapAppDriven != 0 {
		// The application's loop: unix.Poll over plugloop's fds (and
		// any of its own), ServiceFD for the ready ones, Service(0).
		for sig.Err() == nil {
			if err := set.Poll(ctx.Thread(0), nil, 100*time.Millisecond); err != nil {
				return err
			}
		}
	} else if err := ctx.Run(sig); err != nil && err != context.Canceled {
		return err
	}
	s := ctx.Stats()
	fmt.Fprintf(os.Stderr, "echo: stopped; %d reads, %d writes, %d waits, %d interest changes\n",
		s.Reads, s.Writes, s.Waits, s.InterestChanges)
	return nil
}

func listBackends() {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSTATUS\tCAPABILITIES")
	for _, d := range evlib.Backends() {
		status := "available"
		if !d.Available() {
			status = "unavailable: " + d.Unavailable.Error()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", d.Name, status, d.Caps)
	}
	w.Flush()
}
