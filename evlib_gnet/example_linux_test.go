package evlib_gnet_test

import (
	"errors"
	"fmt"
	"io"
	"net"

	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/panjf2000/gnet/v2/pkg/queue"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_gnet"
)

// An application that owns a gnet poller hosts a plugloop echo server on
// it: its Polling callback serves its own fds and forwards the rest to
// the Host. Everything plugloop does runs on the application's Polling
// goroutine; destroying the context leaves the poller running.
func ExampleDispatcher() {
	poller, err := netpoll.OpenPoller()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer poller.Close()

	// Echo, the libwebsockets way: RAW_RX keeps the bytes and asks for a
	// WRITEABLE callback, RAW_WRITEABLE writes them.
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
	ctx, err := core.New(core.Info{EventLib: evlib_gnet.Name, Foreign: []any{poller}, Protocols: []core.Protocol{echo}})
	if err != nil {
		fmt.Println(err)
		return
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	if err != nil {
		fmt.Println(err)
		return
	}

	host := evlib_gnet.Dispatcher(poller)
	polled := make(chan error, 1)
	go func() {
		polled <- poller.Polling(func(fd int, ev netpoll.IOEvent, fl netpoll.IOFlags) error {
			// The application's own fds would be served here.
			return host.Dispatch(fd, ev, fl)
		})
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	c.Write([]byte("hello"))
	reply := make([]byte, 5)
	io.ReadFull(c, reply)
	c.Close()
	fmt.Printf("%s, on the application's poller\n", reply)

	ctx.Destroy()
	<-ctx.Done()
	fmt.Println("listener still registered:", host.Owns(ln.FD()))

	// The poller is the application's to stop.
	poller.Trigger(queue.HighPriority, func(any) error { return gerrors.ErrEngineShutdown }, nil)
	fmt.Println("Polling ended by the application:", errors.Is(<-polled, gerrors.ErrEngineShutdown))
	// Output:
	// hello, on the application's poller
	// listener still registered: false
	// Polling ended by the application: true
}
