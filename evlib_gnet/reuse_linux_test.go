//go:build linux

package evlib_gnet_test

import (
	"context"
	"testing"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// gnet's Polling hands the core one batch's events one at a time, with a
// pass after each. A callback of the first event closes the third's pipe,
// one of the second opens a pipe: the closed fd stays open until the batch
// is over, so the new pipe cannot get its number, and the batch's stale
// EPOLLHUP of the closed pipe cannot end the new one.
func TestLoopStaleEventMeetsNoNewFD(t *testing.T) {
	var ctx *core.Context
	var a, b, x, fresh *core.Conn
	xFD, freshFD, freshW := -1, -1, -1
	var freshEnd error
	adopted := make(chan struct{})
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawRXFile:
			var buf [16]byte
			unix.Read(ev.Conn.FD(), buf[:])
			switch {
			case ev.Conn == a && x != nil:
				xFD = x.FD()
				x.Close()
				x = nil
			case ev.Conn == b && fresh == nil:
				var p [2]int
				if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
					return err
				}
				freshW = p[1]
				c, err := ctx.AdoptFile(p[0], "p")
				if err != nil {
					return err
				}
				fresh, freshFD = c, p[0]
				close(adopted)
			}
		case core.ReasonRawCloseFile:
			if ev.Conn == fresh {
				freshEnd = ev.Err
			}
		}
		return nil
	}
	var err error
	ctx, err = core.New(core.Info{EventLib: evlib_gnet.Name, Protocols: []core.Protocol{{Name: "p", Callback: cb}}})
	require.NoError(t, err)
	pipe := func() (r, w int) {
		var p [2]int
		require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
		return p[0], p[1]
	}
	ra, wa := pipe()
	rb, wb := pipe()
	rx, wx := pipe()
	defer unix.Close(wa)
	defer unix.Close(wb)
	for _, c := range []struct {
		conn **core.Conn
		fd   int
	}{{&a, ra}, {&b, rb}, {&x, rx}} {
		*c.conn, err = ctx.AdoptFile(c.fd, "p")
		require.NoError(t, err)
	}
	// Made ready in this order, they come in one batch in this order.
	unix.Write(wa, []byte("a"))
	unix.Write(wb, []byte("b"))
	unix.Close(wx) // x: EPOLLHUP
	done := make(chan error, 1)
	go func() { done <- ctx.Run(context.Background()) }()
	<-adopted
	// Passes go on until x's fd is closed (a later batch).
	xClosed := false
	for range 10_000 {
		ran := make(chan bool)
		require.NoError(t, ctx.Thread(0).Post(func() {
			_, err := unix.FcntlInt(uintptr(xFD), unix.F_GETFD, 0)
			ran <- err == unix.EBADF
		}))
		if xClosed = <-ran; xClosed {
			break
		}
	}
	freshOpen := make(chan bool)
	require.NoError(t, ctx.Thread(0).Post(func() { freshOpen <- !fresh.Closed() }))
	require.True(t, <-freshOpen, "the new pipe, its writer open, was closed (%v)", freshEnd)
	require.NoError(t, ctx.Thread(0).Post(func() { ctx.Destroy() }))
	require.NoError(t, <-done)
	unix.Close(freshW)
	require.True(t, xClosed, "x's fd still open after 10,000 passes")
	require.NotEqual(t, xFD, freshFD, "the new pipe got the number of one closed earlier in the same batch")
}
