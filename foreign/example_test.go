//go:build unix

package foreign_test

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/foreign"
	"golang.org/x/sys/unix"
)

// The application owns the loop: one unix.Poll over its own pipe and
// plugloop's fds, here an echo server's. PollSet learns plugloop's fds from
// the poll-fd callbacks and hands their events back; the application sees
// only its own.
func ExamplePollSet() {
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
	set := new(foreign.PollSet)
	ctx, err := core.New(core.Info{EventLib: foreign.Name, Protocols: []core.Protocol{set.Protocol(echo)}})
	if err != nil {
		fmt.Println(err)
		return
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	if err != nil {
		fmt.Println(err)
		return
	}

	// The application's own fd: a pipe on which a client reports back.
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		fmt.Println(err)
		return
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	go func() {
		reply := make([]byte, 5)
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Write([]byte("hello"))
			io.ReadFull(c, reply)
			c.Close()
		}
		unix.Write(p[1], reply)
	}()

	t := ctx.Thread(0)
	mine := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	for {
		if err := set.Poll(t, mine, time.Second); err != nil {
			fmt.Println(err)
			return
		}
		if mine[0].Revents != 0 {
			var b [16]byte
			n, _ := unix.Read(p[0], b[:])
			fmt.Printf("the client got %q back\n", b[:max(n, 0)])
			break
		}
	}
	fmt.Println("plugloop's fds in the set:", set.Len() > 0)
	ctx.Destroy()
	fmt.Println("after Destroy:", set.Len())
	// Output:
	// the client got "hello" back
	// plugloop's fds in the set: true
	// after Destroy: 0
}
