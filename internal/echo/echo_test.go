//go:build unix

package echo_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/echo"
)

func serve(t *testing.T, lib string, opts ...echo.Option) string {
	t.Helper()
	ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{echo.Protocol("echo", opts...)}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx.Destroy()
		<-ctx.Done()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

func TestEcho(t *testing.T) {
	for _, lib := range []string{"poll", "epoll"} {
		t.Run(lib, func(t *testing.T) {
			c, err := net.Dial("tcp", serve(t, lib))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			msg := []byte("0123456789abcdef")
			got := make([]byte, len(msg))
			for range 100 {
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(c, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, msg) {
					t.Fatalf("got %q, want %q", got, msg)
				}
			}
		})
	}
}

// TestEchoFlowControl sends much more than the buffer limit before reading
// anything back: rx must pause and resume without losing or reordering a byte.
func TestEchoFlowControl(t *testing.T) {
	for _, lib := range []string{"poll", "epoll"} {
		t.Run(lib, func(t *testing.T) {
			c, err := net.Dial("tcp", serve(t, lib, echo.MaxBuffered(4<<10)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			want := make([]byte, 4<<20)
			for i := range want {
				want[i] = byte(i * 7)
			}
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(want)
				errc <- err
			}()
			got := make([]byte, len(want))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("echoed stream differs from what was sent")
			}
		})
	}
}
