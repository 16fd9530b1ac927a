//go:build unix

package core_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/plugloop/plugloop/core"
)

// A client connection: Connect returns at once, and the protocol sees the
// connection from RAW_ADOPT on, once it is established; a failed connect
// comes as CLIENT_CONNECTION_ERROR instead. It writes, as every
// connection does, from RAW_WRITEABLE.
func ExampleContext_Connect() {
	// A server to talk to: the standard library's, echoing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()

	done := make(chan struct{})
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{
		Name: "client",
		Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				_, err := ev.Conn.Write([]byte("ping"))
				return err
			case core.ReasonRawRX:
				fmt.Printf("echoed: %s\n", ev.Data)
				return ev.Conn.Close()
			case core.ReasonClientConnectionError:
				fmt.Println("connect failed:", ev.Err)
				close(done)
			case core.ReasonRawClose:
				close(done)
			}
			return nil
		},
	}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := ctx.Connect("tcp", ln.Addr().String(), "client"); err != nil {
		fmt.Println(err)
		return
	}
	go ctx.Run(context.Background())
	<-done
	ctx.Destroy()
	<-ctx.Done()
	// Output: echoed: ping
}

// A UDP echo server: each datagram comes in its own RAW_RX with Event.From,
// and WriteTo answers it from RAW_WRITEABLE.
func ExampleContext_ListenUDP() {
	type datagram struct {
		data []byte
		from netip.AddrPort
	}
	var pending []datagram
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{
		Name: "udp-echo",
		Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawRX:
				// Data is valid only during the callback: keep a copy.
				pending = append(pending, datagram{append([]byte(nil), ev.Data...), ev.From})
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				d := pending[0]
				pending = pending[1:]
				if len(pending) > 0 {
					ev.Conn.CallbackOnWritable()
				}
				_, err := ev.Conn.WriteTo(d.data, d.from)
				return err
			}
			return nil
		},
	}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	srv, err := ctx.ListenUDP("udp4", "127.0.0.1:0", "udp-echo")
	if err != nil {
		fmt.Println(err)
		return
	}
	go ctx.Run(context.Background())

	c, err := net.Dial("udp4", srv.LocalAddr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	c.Write([]byte("ping"))
	reply := make([]byte, 16)
	n, _ := c.Read(reply)
	fmt.Printf("echoed: %s\n", reply[:n])
	ctx.Destroy()
	<-ctx.Done()
	// Output: echoed: ping
}
