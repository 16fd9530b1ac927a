//go:build unix

package core_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
)

func TestSmokeEcho(t *testing.T) {
	for _, lib := range []string{"poll", "epoll"} {
		t.Run(lib, func(t *testing.T) {
			type sess struct{ q []byte }
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{
				Name: "echo",
				Callback: func(ev core.Event) error {
					switch ev.Reason {
					case core.ReasonRawAdopt:
						ev.Conn.SetUser(&sess{})
					case core.ReasonRawRX:
						s := ev.Conn.User().(*sess)
						s.q = append(s.q, ev.Data...)
						return ev.Conn.CallbackOnWritable()
					case core.ReasonRawWriteable:
						s := ev.Conn.User().(*sess)
						_, err := ev.Conn.Write(s.q)
						s.q = s.q[:0]
						return err
					}
					return nil
				},
			}}})
			require.NoError(t, err)
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
			require.NoError(t, err)
			done := make(chan error)
			go func() { done <- ctx.Run(context.Background()) }()
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			for i := 0; i < 100; i++ {
				_, err = c.Write([]byte("hello"))
				require.NoError(t, err)
				buf := make([]byte, 5)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = io.ReadFull(c, buf)
				require.NoError(t, err)
				require.Equal(t, "hello", string(buf))
			}
			c.Close()
			require.NoError(t, ctx.Destroy())
			<-ctx.Done()
			require.NoError(t, <-done)
			t.Logf("%+v", ctx.Stats())
		})
	}
}
