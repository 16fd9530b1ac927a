//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll_test

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/stretchr/testify/require"
)

// A reader goroutine whose stream closed serves the next stream: one
// connection after another costs one reader in all. Readers beyond
// MaxIdleReaders end, and the idle ones end with the backend.
func TestReadersReused(t *testing.T) {
	noLeaks(t)
	closed := make(chan struct{}, 1)
	echoCB := echo.Protocol("p").Callback
	ctx, addr := running(t, evlib_netpoll.Name, func(ev core.Event) error {
		if ev.Reason == core.ReasonRawClose {
			select {
			case closed <- struct{}{}:
			default:
			}
		}
		return echoCB(ev)
	})
	idle0 := evlib_netpoll.IdleReaders()
	echoOnce := func() {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("ping"))
		require.NoError(t, err)
		got := make([]byte, 4)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.Equal(t, "ping", string(got))
	}
	echoOnce()
	<-closed
	waitUntil(t, "the first reader never went idle", func() bool { return evlib_netpoll.IdleReaders() >= idle0+1 })
	starts := evlib_netpoll.ReaderStarts()
	for range 20 {
		echoOnce()
		<-closed
		waitUntil(t, "a reader never went idle", func() bool { return evlib_netpoll.IdleReaders() >= idle0+1 })
	}
	require.Equal(t, starts, evlib_netpoll.ReaderStarts(), "a connection started a reader although one was idle")

	// More streams at once than a backend keeps idle readers for.
	n := evlib_netpoll.MaxIdleReaders + 8
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		conns[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Write([]byte("ping")); err == nil {
				io.ReadFull(c, make([]byte, 4))
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	waitUntil(t, "idle readers never settled at the cap", func() bool {
		return evlib_netpoll.IdleReaders() == idle0+int64(evlib_netpoll.MaxIdleReaders)
	})
	require.NoError(t, ctx.Destroy())
	waitUntil(t, "idle readers outlived the backend", func() bool { return evlib_netpoll.IdleReaders() == idle0 })
}
