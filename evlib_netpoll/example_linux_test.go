//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"context"
	"fmt"
	"io"
	"net"

	"github.com/cloudwego/netpoll"
	"github.com/plugloop/plugloop/core"
	_ "github.com/plugloop/plugloop/evlib_netpoll"
)

// plugloop on netpoll, beside an application's own netpoll server: both
// share netpoll's process-wide pollers, plugloop changes none of its
// settings, and destroying plugloop's context leaves the application's
// server serving.
func Example() {
	// The application's own netpoll echo server.
	appLn, err := netpoll.CreateListener("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	loop, err := netpoll.NewEventLoop(func(_ context.Context, c netpoll.Connection) error {
		r, w := c.Reader(), c.Writer()
		p, err := r.Next(r.Len())
		if err == nil {
			if _, err = w.WriteBinary(p); err == nil {
				err = w.Flush()
			}
		}
		r.Release()
		return err
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	go loop.Serve(appLn)
	defer loop.Shutdown(context.Background())

	// plugloop's echo server, on the netpoll backend. Echo, the
	// libwebsockets way: RAW_RX keeps the bytes and asks for a WRITEABLE
	// callback, RAW_WRITEABLE writes them.
	echo := core.Protocol{
		Name: "echo",
		Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawRX:
				pending, _ := ev.Conn.User().([]byte)
				ev.Conn.SetUser(append(pending, ev.Data...))
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				_, err := ev.Conn.Write(ev.Conn.User().([]byte))
				ev.Conn.SetUser(nil)
				return err
			}
			return nil
		},
	}
	ctx, err := core.New(core.Info{EventLib: "netpoll", Protocols: []core.Protocol{echo}})
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

	fmt.Println("plugloop:", roundTrip(ln.Addr().String(), "hello"))
	fmt.Println("application:", roundTrip(appLn.Addr().String(), "hello"))
	ctx.Destroy()
	<-ctx.Done()
	fmt.Println("application, after plugloop is gone:", roundTrip(appLn.Addr().String(), "still here"))
	// Output:
	// plugloop: hello
	// application: hello
	// application, after plugloop is gone: still here
}

// roundTrip sends msg to an echo server at addr and returns the reply.
func roundTrip(addr, msg string) string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	c.Write([]byte(msg))
	reply := make([]byte, len(msg))
	if _, err := io.ReadFull(c, reply); err != nil {
		return err.Error()
	}
	return string(reply)
}
