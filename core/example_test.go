//go:build unix

package core_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// An echo server written the libwebsockets way: RAW_RX queues the bytes and
// asks for a WRITEABLE callback, RAW_WRITEABLE writes them once.
func Example() {
	type session struct{ pending []byte }
	ctx, err := core.New(core.Info{
		EventLib: "epoll",
		Protocols: []core.Protocol{{
			Name: "echo",
			Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawAdopt:
					ev.Conn.SetUser(&session{})
				case core.ReasonRawRX:
					s := ev.Conn.User().(*session)
					s.pending = append(s.pending, ev.Data...)
					return ev.Conn.CallbackOnWritable()
				case core.ReasonRawWriteable:
					s := ev.Conn.User().(*session)
					_, err := ev.Conn.Write(s.pending)
					s.pending = s.pending[:0]
					return err
				}
				return nil
			},
		}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	if err != nil {
		fmt.Println(err)
		return
	}
	go ctx.Run(context.Background())

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	c.Write([]byte("hello"))
	reply := make([]byte, 5)
	io.ReadFull(c, reply)
	c.Close()
	fmt.Printf("%s from the %s backend\n", reply, ctx.EventLib())

	ctx.Destroy() // safe from any goroutine; Run returns
	<-ctx.Done()
	// Output: hello from the epoll backend
}

// CancelService is the one way in from other goroutines: it wakes the
// service thread, which delivers EVENT_WAIT_CANCELLED on its own goroutine,
// where the callback may touch connections.
func ExampleContext_CancelService() {
	woken := make(chan struct{})
	ctx, _ := core.New(core.Info{Protocols: []core.Protocol{{
		Name: "worker",
		Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonEventWaitCancelled {
				close(woken)
			}
			return nil
		},
	}}})
	go ctx.Run(context.Background())
	go ctx.CancelService() // from any goroutine
	<-woken
	fmt.Println("woken on the service goroutine")
	ctx.Destroy()
	<-ctx.Done()
	// Output: woken on the service goroutine
}

// Timers live on the service thread's sorted list and fire in order.
func ExampleThread_AfterFunc() {
	ctx, _ := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	t := ctx.Thread(0)
	for _, d := range []time.Duration{3, 1, 2} {
		t.AfterFunc(d*time.Millisecond, func() { fmt.Println("timer", int(d)) })
	}
	for range 3 {
		t.Service(10 * time.Millisecond) // one pass at a time, lws_service style
	}
	ctx.Destroy()
	// Output:
	// timer 1
	// timer 2
	// timer 3
}

// With several service threads, adopted connections go to the least-loaded
// thread, like accepted ones; OnThread pins one.
func ExampleOnThread() {
	ctx, _ := core.New(core.Info{CountThreads: 2, Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	adopt := func(opts ...core.AdoptOption) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer unix.Close(fds[1]) // the peer; plugloop owns fds[0] from here
		c, err := ctx.AdoptFD(fds[0], "p", opts...)
		if err != nil {
			fmt.Println(err)
			unix.Close(fds[0])
			return
		}
		fmt.Println("on thread", c.Thread().Index())
	}
	adopt()                 // both threads are empty: the first one
	adopt()                 // thread 0 has one: thread 1
	adopt(core.OnThread(1)) // pinned
	ctx.Destroy()
	// Output:
	// on thread 0
	// on thread 1
	// on thread 1
}

// A context's backend is chosen by name (Info.EventLib), by option flag
// (Info.Options) or by the PLUGLOOP_EVLIB environment variable. A name
// that cannot be used is an error that says why.
func ExampleNew_unknownBackend() {
	protocols := []core.Protocol{{Name: "raw", Callback: func(core.Event) error { return nil }}}
	_, err := core.New(core.Info{EventLib: "libuv", Protocols: protocols})
	fmt.Println(errors.Is(err, evlib.ErrUnknown))
	// The message names what this program can use, for example:
	// evlib: unknown event-loop backend: "libuv" (available: epoll, poll)

	// A built-in backend is known even when its package is not linked in;
	// the message says which package to import.
	_, err = core.New(core.Info{EventLib: "netpoll", Protocols: protocols})
	fmt.Println(errors.Is(err, evlib.ErrUnavailable))
	// Output:
	// true
	// true
}

// A request that ends with the client's half-close, answered after it: with
// AllowHalfOpen the peer's end of stream comes as RAW_RX_END and leaves the
// connection open for as long as the answer takes; CloseWrite ends the
// answer, and the connection closes, both sides being done, once it has
// left.
func ExampleProtocol_allowHalfOpen() {
	closed := make(chan error, 1)
	ctx, err := core.New(core.Info{
		EventLib: "epoll",
		Protocols: []core.Protocol{{
			Name:          "count",
			AllowHalfOpen: true,
			Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawAdopt:
					ev.Conn.SetUser(new(int))
				case core.ReasonRawRX:
					*ev.Conn.User().(*int) += len(ev.Data)
				case core.ReasonRawRxEnd: // the whole request is in
					return ev.Conn.CallbackOnWritable()
				case core.ReasonRawWriteable:
					answer := fmt.Sprintf("%d bytes\n", *ev.Conn.User().(*int))
					if _, err := ev.Conn.Write([]byte(answer)); err != nil {
						return err
					}
					return ev.Conn.CloseWrite()
				case core.ReasonRawClose:
					closed <- ev.Err
				}
				return nil
			},
		}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() {
		ctx.Destroy()
		<-ctx.Done()
	}()
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "count")
	if err != nil {
		fmt.Println(err)
		return
	}
	go ctx.Run(context.Background())

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	c.Write([]byte("a request of 28 bytes, then "))
	c.(*net.TCPConn).CloseWrite() // as "nc -N" does
	answer, err := io.ReadAll(c)
	fmt.Printf("%q %v\n", answer, err)
	fmt.Println("RAW_CLOSE:", <-closed)
	// Output:
	// "28 bytes\n" <nil>
	// RAW_CLOSE: <nil>
}
