//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package selectbackend_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"

	_ "example.com/selectbackend" // registers "select"
	"github.com/plugloop/plugloop/core"
)

// echo answers every message with itself: RAW_RX asks for a WRITEABLE
// callback, RAW_WRITEABLE writes what came.
func echo(ev core.Event) error {
	switch ev.Reason {
	case core.ReasonRawAdopt:
		ev.Conn.SetUser(&[]byte{})
	case core.ReasonRawRX:
		q := ev.Conn.User().(*[]byte)
		*q = append(*q, ev.Data...)
		return ev.Conn.CallbackOnWritable()
	case core.ReasonRawWriteable:
		q := ev.Conn.User().(*[]byte)
		_, err := ev.Conn.Write(*q)
		*q = (*q)[:0]
		return err
	}
	return nil
}

// A program links the backend in with a blank import and selects it by
// name; the rest of the program is the same on every backend. Here Run
// serves on the example's goroutine while a client says hello and
// destroys the context once it has its echo.
func Example() {
	ctx, err := core.New(core.Info{
		EventLib:  "select",
		Protocols: []core.Protocol{{Name: "echo", Callback: echo}},
	})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	if err != nil {
		log.Fatal(err)
	}
	reply := make(chan string, 1)
	go func() {
		defer ctx.Destroy() // from any goroutine: Run returns
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			reply <- err.Error()
			return
		}
		defer c.Close()
		buf := []byte("hello")
		if _, err = c.Write(buf); err == nil {
			_, err = io.ReadFull(c, buf)
		}
		if err != nil {
			reply <- err.Error()
			return
		}
		reply <- string(buf)
	}()
	if err := ctx.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-reply, "from the", ctx.EventLib(), "backend")
	// Output: hello from the select backend
}
