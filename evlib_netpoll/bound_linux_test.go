package evlib_netpoll_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_netpoll"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A connection whose rx stays paused while its peer keeps sending is
// closed with ENOBUFS once netpoll holds more than MaxPausedRx bytes for
// it, instead of buffering without limit.
func TestPausedRxBound(t *testing.T) {
	closed := make(chan error, 1)
	ctx, err := core.New(core.Info{
		EventLib: evlib_netpoll.Name,
		Protocols: []core.Protocol{{Name: "paused", Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				return ev.Conn.RxFlowControl(false)
			case core.ReasonRawClose:
				closed <- ev.Err
			}
			return nil
		}}},
	})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "paused")
	require.NoError(t, err)
	runDone := make(chan error, 1)
	go func() { runDone <- ctx.Run(context.Background()) }()
	defer func() {
		ctx.Destroy()
		<-runDone
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	sent := make(chan int, 1)
	go func() {
		buf := make([]byte, 256<<10)
		total := 0
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for {
			n, err := c.Write(buf)
			total += n
			if err != nil {
				sent <- total
				return
			}
		}
	}()
	select {
	case err := <-closed:
		require.ErrorIs(t, err, unix.ENOBUFS)
	case <-time.After(20 * time.Second):
		t.Fatal("the paused connection was not closed")
	}
	c.Close()
	require.Greater(t, <-sent, evlib_netpoll.MaxPausedRx)
}
