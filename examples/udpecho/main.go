//go:build unix

// Command udpecho answers every UDP datagram with the same bytes, on any
// plugloop backend, until SIGINT or SIGTERM. It shows core.Context.ListenUDP,
// Event.From and Conn.WriteTo: each datagram arrives in its own RAW_RX, is
// queued with its sender, and goes back out one per RAW_WRITEABLE.
//
//	go run ./examples/udpecho -addr 127.0.0.1:7682 -evlib poll
//	socat - UDP:127.0.0.1:7682        # type lines, each comes back
//	echo hello | nc -u -w1 127.0.0.1 7682
//
// -evlib takes any backend name that has a loop of its own (not foreign);
// PLUGLOOP_EVLIB overrides it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/plugloop/plugloop/core"
	_ "github.com/plugloop/plugloop/evlib_gnet"    // -evlib gnet
	_ "github.com/plugloop/plugloop/evlib_netpoll" // -evlib netpoll (Linux)
)

type datagram struct {
	data []byte
	to   netip.AddrPort
}

// maxQueued bounds the replies waiting for WRITEABLE; beyond it datagrams
// are dropped, as UDP may.
const maxQueued = 1024

func main() {
	lib := flag.String("evlib", "", "event-loop backend (default: the best available)")
	addr := flag.String("addr", "127.0.0.1:7682", "UDP address to listen on")
	verbose := flag.Bool("v", false, "log every datagram")
	flag.Parse()
	if err := run(*lib, *addr, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "udpecho:", err)
		os.Exit(1)
	}
}

func run(lib, addr string, verbose bool) error {
	var queue []datagram
	proto := core.Protocol{Name: "udpecho", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawRX:
			if verbose {
				fmt.Fprintf(os.Stderr, "udpecho: %d bytes from %v\n", len(ev.Data), ev.From)
			}
			if len(queue) >= maxQueued {
				return nil
			}
			queue = append(queue, datagram{append([]byte(nil), ev.Data...), ev.From})
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			if len(queue) == 0 {
				return nil
			}
			d := queue[0]
			if _, err := ev.Conn.WriteTo(d.data, d.to); err != nil {
				if errors.Is(err, syscall.EAGAIN) {
					return ev.Conn.CallbackOnWritable() // try again later
				}
				fmt.Fprintln(os.Stderr, "udpecho: sending to", d.to, err)
			}
			queue[0] = datagram{}
			queue = queue[1:]
			if len(queue) > 0 {
				return ev.Conn.CallbackOnWritable()
			}
		case core.ReasonRawClose:
			if ev.Err != nil && !errors.Is(ev.Err, core.ErrDestroyed) { // not just stopping
				fmt.Fprintln(os.Stderr, "udpecho: socket closed:", ev.Err)
			}
		}
		return nil
	}}
	ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{proto}})
	if err != nil {
		return err
	}
	defer ctx.Destroy()
	conn, err := ctx.ListenUDP("udp", addr, "")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "udpecho: answering on udp %v with the %s backend; ^C stops\n", conn.LocalAddr(), ctx.EventLib())
	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := ctx.Run(sig); err != nil && err != context.Canceled {
		return err
	}
	return nil
}
