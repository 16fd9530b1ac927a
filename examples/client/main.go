//go:build unix

// Command client is a raw TCP (or unix-socket) client on any plugloop
// backend: it connects with core.Context.Connect, sends each line read
// from stdin as it is (of any length), and prints whatever comes back. A
// connection that cannot be established (refused, unreachable,
// ConnectTimeout) is reported from the CLIENT_CONNECTION_ERROR callback
// and the program exits with status 1.
//
//	go run ./examples/echo &                      # something to talk to
//	go run ./examples/client -addr 127.0.0.1:7681  # type lines, see them echoed
//	socat TCP-LISTEN:7690,reuseaddr,fork EXEC:cat & go run ./examples/client -addr 127.0.0.1:7690
//	go run ./examples/client -addr 127.0.0.1:1     # refused: CLIENT_CONNECTION_ERROR
//	go run ./examples/client -addr localhost:7681  # the name's addresses raced (Happy Eyeballs)
//
// -evlib takes any backend name that has a loop of its own (not foreign);
// PLUGLOOP_EVLIB overrides it. At end of stdin, once everything was sent,
// the client shuts its write side down and keeps printing what comes back;
// the program ends when the server closes or on SIGINT.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/plugloop/plugloop/core"
	_ "github.com/plugloop/plugloop/evlib_gnet"    // -evlib gnet
	_ "github.com/plugloop/plugloop/evlib_netpoll" // -evlib netpoll (Linux)
)

func main() {
	lib := flag.String("evlib", "", "event-loop backend (default: the best available)")
	addr := flag.String("addr", "127.0.0.1:7681", "server address: HOST:PORT, or a path for a unix socket")
	timeout := flag.Duration("timeout", 5*time.Second, "connect timeout (core.Info.ConnectTimeout)")
	delay := flag.Duration("attempt-delay", 0, "how long one address's connect may hang before the next is raced beside it; 0: 250 ms, negative: one address at a time (core.Info.ConnectAttemptDelay)")
	flag.Parse()
	if err := run(*lib, *addr, *timeout, *delay, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

// client is the connection's state; only the loop goroutine touches it.
type client struct {
	out    []byte // lines waiting for WRITEABLE
	eof    bool   // stdin ended: shut the write side down once out is sent
	shut   bool
	failed error // CLIENT_CONNECTION_ERROR's reason
}

// run connects to addr, sends what it reads from in, line by line, and
// writes what comes back to out (on the loop's goroutine).
func run(lib, addr string, timeout, delay time.Duration, in io.Reader, out io.Writer) error {
	st := &client{}
	var ctx *core.Context
	proto := core.Protocol{Name: "client", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonClientConnectionError:
			st.failed = ev.Err
			return ctx.Destroy() // deferred until the callback returns
		case core.ReasonRawAdopt:
			fmt.Fprintf(os.Stderr, "client: connected to %v\n", ev.Conn.RemoteAddr())
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawRX:
			out.Write(ev.Data)
		case core.ReasonRawWriteable:
			if len(st.out) > 0 {
				n, err := ev.Conn.Write(st.out)
				if err != nil {
					return err
				}
				st.out = st.out[n:]
			}
			if st.eof && len(st.out) == 0 && !st.shut {
				// Half-close, once what the core still holds has left:
				// the server sees end of stream, and what it still sends
				// back is printed until it closes too.
				st.shut = true
				return ev.Conn.CloseWrite()
			}
		case core.ReasonRawClose:
			switch {
			case errors.Is(ev.Err, io.EOF):
				fmt.Fprintln(os.Stderr, "client: the server closed the connection")
			case errors.Is(ev.Err, core.ErrDestroyed), ev.Err == nil:
				// We are stopping (SIGINT), or closed it ourselves.
			default:
				fmt.Fprintln(os.Stderr, "client: connection closed:", ev.Err)
			}
			return ctx.Destroy()
		}
		return nil
	}}
	var err error
	ctx, err = core.New(core.Info{EventLib: lib, ConnectTimeout: timeout, ConnectAttemptDelay: delay, Protocols: []core.Protocol{proto}})
	if err != nil {
		return err
	}
	defer ctx.Destroy()
	network := "tcp"
	if strings.Contains(addr, "/") {
		network = "unix"
	}
	conn, err := ctx.Connect(network, addr, "")
	if err != nil {
		return err
	}

	// stdin is read on its own goroutine; each line, however long, is
	// posted to the loop (a last line without its newline gets one).
	go func() {
		br := bufio.NewReader(in)
		for {
			line, err := br.ReadBytes('\n') // a new slice every time
			if len(line) > 0 {
				if line[len(line)-1] != '\n' {
					line = append(line, '\n')
				}
				if ctx.Thread(0).Post(func() {
					st.out = append(st.out, line...)
					if !conn.Connecting() && !conn.Closed() {
						conn.CallbackOnWritable()
					}
				}) != nil {
					return
				}
			}
			if err != nil {
				if err != io.EOF {
					fmt.Fprintln(os.Stderr, "client: reading stdin:", err)
				}
				break
			}
		}
		ctx.Thread(0).Post(func() {
			st.eof = true
			if !conn.Connecting() && !conn.Closed() {
				conn.CallbackOnWritable()
			}
		})
	}()

	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := ctx.Run(sig); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, core.ErrDestroyed) {
		return err
	}
	if st.failed != nil {
		return fmt.Errorf("CLIENT_CONNECTION_ERROR: cannot connect to %s: %w", addr, st.failed)
	}
	return nil
}
