//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"context"
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
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- echo.Check(addr, rounds)
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
