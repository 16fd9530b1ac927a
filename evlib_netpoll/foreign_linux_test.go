package evlib_netpoll_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/stretchr/testify/require"
)

// The backend works beside an application that uses netpoll itself: the
// process runs the application's netpoll.EventLoop echo server and a
// plugloop echo server on the backend at once, both on netpoll's
// process-wide pollers, and both serve concurrent traffic correctly. The
// backend never calls netpoll.Configure or the like.
func TestBesideNetpollApplication(t *testing.T) {
	// The application's server.
	appLn, err := netpoll.CreateListener("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	loop, err := netpoll.NewEventLoop(func(_ context.Context, c netpoll.Connection) error {
		r := c.Reader()
		p, err := r.Next(r.Len())
		if err != nil {
			return err
		}
		w := c.Writer()
		if _, err = w.WriteBinary(p); err == nil {
			err = w.Flush()
		}
		r.Release()
		return err
	})
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- loop.Serve(appLn) }()

	// plugloop's server on the backend.
	ctx, err := core.New(core.Info{
		Options:   core.OptionEvlibNetpoll,
		Protocols: []core.Protocol{echo.Protocol("echo")},
	})
	require.NoError(t, err)
	require.Equal(t, evlib_netpoll.Name, ctx.EventLib())
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	require.NoError(t, err)
	runDone := make(chan error, 1)
	go func() { runDone <- ctx.Run(context.Background()) }()

	const clients, rounds = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, 2*clients)
	for _, addr := range []string{appLn.Addr().String(), ln.Addr().String()} {
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- roundTrips(addr, i, rounds)
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	require.NoError(t, ctx.Destroy())
	select {
	case <-runDone:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Destroy")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, loop.Shutdown(sctx))
	<-served
}

func roundTrips(addr string, id, rounds int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, 64<<10)
	for r := range rounds {
		msg := bytes.Repeat([]byte(fmt.Sprintf("%d.%d;", id, r)), 1+r%97*(1+r%7))
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("%s: write: %w", addr, err)
		}
		if _, err := io.ReadFull(c, got[:len(msg)]); err != nil {
			return fmt.Errorf("%s: read: %w", addr, err)
		}
		if !bytes.Equal(got[:len(msg)], msg) {
			return fmt.Errorf("%s: round %d: echo differs", addr, r)
		}
	}
	return nil
}
