//go:build unix

package core_test

import (
	"math"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// socketpairConn adopts one end of a socketpair on a new context of lib; the
// other end is closed with the test.
func socketpairConn(t *testing.T, info core.Info, cb core.Callback) (*core.Context, *core.Conn) {
	t.Helper()
	info.Protocols = []core.Protocol{{Name: "p", Callback: cb}}
	ctx, err := core.New(info)
	require.NoError(t, err)
	t.Cleanup(func() { ctx.Destroy() })
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fds[1]) })
	c, err := ctx.AdoptFD(fds[0], "")
	require.NoError(t, err)
	return ctx, c
}

// A duration too long to add to the clock means "not in this lifetime",
// not "now": the deadline used to wrap round to the past, so
// SetTimeout(math.MaxInt64) closed the connection at once with ErrTimeout,
// AfterFunc(math.MaxInt64) ran f in the next pass, and a huge
// Info.IdleTimeout rescheduled its check into the past forever (the pass
// never returned).
func TestHugeDurationsAreNotNow(t *testing.T) {
	for _, lib := range []string{"poll", "epoll"} {
		t.Run(lib, func(t *testing.T) {
			var reasons []core.Reason
			ctx, c := socketpairConn(t, core.Info{EventLib: lib, IdleTimeout: math.MaxInt64}, func(ev core.Event) error {
				if ev.Conn != nil && ev.Reason != core.ReasonLockPoll && ev.Reason != core.ReasonUnlockPoll {
					reasons = append(reasons, ev.Reason)
				}
				return nil
			})
			fired := false
			_, err := ctx.Thread(0).AfterFunc(math.MaxInt64, func() { fired = true })
			require.NoError(t, err)
			require.NoError(t, c.SetTimeout(math.MaxInt64))
			require.NoError(t, c.SetTimer(math.MaxInt64))
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range 3 {
					ctx.Thread(0).Service(5 * time.Millisecond)
				}
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Service did not return: a timer keeps falling due")
			}
			require.False(t, fired, "AfterFunc(math.MaxInt64) ran at once")
			require.False(t, c.Closed(), "closed by a timeout that should never expire")
			require.NotContains(t, reasons, core.ReasonTimer)
			require.NotContains(t, reasons, core.ReasonRawClose)
		})
	}
}

// ServiceFD(nil) is a bad argument, not a nil dereference inside
// plugloop (which also left the thread's deferred release to a panic).
func TestServiceFDNil(t *testing.T) {
	ctx, _ := socketpairConn(t, core.Info{EventLib: "poll"}, func(core.Event) error { return nil })
	th := ctx.Thread(0)
	require.NotPanics(t, func() { require.ErrorIs(t, th.ServiceFD(nil), core.ErrInvalid) })
	require.NoError(t, th.Service(0), "the thread is still usable")
}

// A Listen on a unix socket that fails (here: the fd limit) leaves no
// socket file behind, so the path can be listened on again; and
// AdoptListener's error leaves the caller's listener as it was, removing
// its file on Close.
func TestListenUnixFailureRemovesSocketFile(t *testing.T) {
	dir := t.TempDir()
	ctx, err := core.New(core.Info{EventLib: "epoll", FDLimit: 1, Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	_, err = ctx.Listen("unix", filepath.Join(dir, "a"), "")
	require.NoError(t, err)
	b := filepath.Join(dir, "b")
	_, err = ctx.Listen("unix", b, "")
	require.ErrorIs(t, err, core.ErrFDLimit)
	require.NoFileExists(t, b, "a failed Listen left its socket file")
	ln, err := net.Listen("unix", b)
	require.NoError(t, err, "the path is free again")
	_, err = ctx.AdoptListener(ln, "")
	require.ErrorIs(t, err, core.ErrFDLimit)
	require.NoError(t, ln.Close())
	require.NoFileExists(t, b, "the caller's listener no longer removed its file on Close")
}

// A Notifier without Notify is refused by New as by RegisterNotifier: New
// called it and panicked, leaving thread 0 held and its fds open.
func TestNewNotifierWithoutNotify(t *testing.T) {
	var ctx *core.Context
	var err error
	require.NotPanics(t, func() {
		ctx, err = core.New(core.Info{EventLib: "poll", Notifiers: []core.Notifier{{Name: "none"}},
			Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	})
	require.ErrorIs(t, err, core.ErrInvalid)
	require.Nil(t, ctx)
}

// A malformed address is ErrInvalid for Listen and ListenUDP, as for
// Connect: they returned net's error, which wraps no sentinel. A system
// error (the port taken) stays what it is.
func TestListenBadAddress(t *testing.T) {
	ctx, _ := socketpairConn(t, core.Info{EventLib: "poll"}, func(core.Event) error { return nil })
	_, err := ctx.Connect("tcp", "127.0.0.1:99999", "")
	require.ErrorIs(t, err, core.ErrInvalid, "Connect")
	_, err = ctx.Listen("tcp", "127.0.0.1:99999", "")
	require.ErrorIs(t, err, core.ErrInvalid, "Listen")
	_, err = ctx.ListenUDP("udp", "127.0.0.1:99999", "")
	require.ErrorIs(t, err, core.ErrInvalid, "ListenUDP")
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	_, err = ctx.Listen("tcp4", ln.Addr().String(), "")
	require.ErrorIs(t, err, unix.EADDRINUSE)
	require.NotErrorIs(t, err, core.ErrInvalid)
}

// A Conn handed over to another thread (OnThread) answers, until
// RAW_ADOPT, as its godoc says: output as on a client still connecting
// (ErrInvalid), everything else ErrClosed.
func TestHandedOverConnErrors(t *testing.T) {
	ctx, err := core.New(core.Info{EventLib: "poll", CountThreads: 2,
		Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	defer unix.Close(fds[1])
	var c *core.Conn
	// From thread 0's pass, for thread 1, which adopts it in its own.
	require.NoError(t, ctx.Thread(0).Post(func() { c, err = ctx.AdoptFD(fds[0], "", core.OnThread(1)) }))
	require.NoError(t, ctx.Thread(0).Service(0))
	require.NoError(t, err)
	_, werr := c.Write([]byte("x"))
	require.ErrorIs(t, werr, core.ErrInvalid, "Write")
	require.ErrorIs(t, c.CallbackOnWritable(), core.ErrInvalid, "CallbackOnWritable")
	require.ErrorIs(t, c.CloseWrite(), core.ErrInvalid, "CloseWrite")
	require.ErrorIs(t, c.RxFlowControl(false), core.ErrClosed, "RxFlowControl")
	require.ErrorIs(t, c.SetTimer(time.Second), core.ErrClosed, "SetTimer")
	require.ErrorIs(t, c.SetTimeout(time.Second), core.ErrClosed, "SetTimeout")
	require.NoError(t, c.Close(), "Close drops it")
}

// Once Destroy was called, Post, CancelService and Attach refuse with
// ErrDestroyed, also while the teardown waits for the busy thread (here:
// Destroy from a callback): Post said nil and its function was dropped.
func TestCallsAfterDestroyInCallback(t *testing.T) {
	ctx, err := core.New(core.Info{EventLib: "poll",
		Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	th := ctx.Thread(0)
	var postErr, cancelErr, ctxCancelErr, attachErr error
	require.NoError(t, th.Post(func() {
		require.NoError(t, ctx.Destroy())
		postErr = th.Post(func() { t.Error("a function posted after Destroy ran") })
		cancelErr = th.CancelService()
		ctxCancelErr = ctx.CancelService()
		attachErr = ctx.Attach(0, core.SystemOperational, func() {})
	}))
	require.ErrorIs(t, th.Service(0), core.ErrDestroyed)
	<-ctx.Done()
	require.ErrorIs(t, postErr, core.ErrDestroyed, "Post")
	require.ErrorIs(t, cancelErr, core.ErrDestroyed, "Thread.CancelService")
	require.ErrorIs(t, ctxCancelErr, core.ErrDestroyed, "Context.CancelService")
	require.ErrorIs(t, attachErr, core.ErrDestroyed, "Attach")
}

// ListenUDP takes "udp", "udp4" or "udp6", like Listen and Connect check
// theirs: with no address it made a UDP socket for any network name
// ("tcp", "unix", ""), and with one it returned net's error, which wraps
// no sentinel.
func TestListenUDPBadNetwork(t *testing.T) {
	ctx, _ := socketpairConn(t, core.Info{EventLib: "epoll"}, func(core.Event) error { return nil })
	for _, network := range []string{"tcp", "unix", "", "ip"} {
		for _, addr := range []string{"", "127.0.0.1:0"} {
			c, err := ctx.ListenUDP(network, addr, "")
			require.ErrorIs(t, err, core.ErrInvalid, "ListenUDP(%q, %q)", network, addr)
			require.Nil(t, c)
		}
	}
	c, err := ctx.ListenUDP("udp4", "", "")
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// AdoptFD of a regular file or a directory gets ErrNotPollable on every
// backend, as AdoptFile does, and the caller keeps the fd. The poll
// backend adopted a regular file as a stream (RAW_ADOPT, its contents as
// RAW_RX, RAW_CLOSE at its end); epoll refused it with evlib.ErrBadFD,
// which is not the core sentinel the docs promise.
func TestAdoptFDRegularFile(t *testing.T) {
	for _, lib := range []string{"poll", "epoll"} {
		t.Run(lib, func(t *testing.T) {
			var adopted bool
			ctx, _ := socketpairConn(t, core.Info{EventLib: lib}, func(ev core.Event) error {
				if ev.Reason == core.ReasonRawAdopt && ev.Conn.User() == "file" {
					adopted = true
				}
				return nil
			})
			f, err := os.CreateTemp(t.TempDir(), "regular")
			require.NoError(t, err)
			defer f.Close()
			d, err := os.Open(t.TempDir())
			require.NoError(t, err)
			defer d.Close()
			for _, fd := range []int{int(f.Fd()), int(d.Fd())} {
				c, err := ctx.AdoptFD(fd, "", core.WithUser("file"))
				require.ErrorIs(t, err, core.ErrNotPollable)
				require.Nil(t, c)
				_, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
				require.NoError(t, err, "the caller keeps its fd")
			}
			require.NoError(t, ctx.Thread(0).Service(0))
			require.False(t, adopted)
		})
	}
}

// A negative Info.CloseTimeout was taken as a bound already past: Close
// of a connection with output pending closed it at once with ErrTimeout
// and dropped the output. New now refuses negative CloseTimeout and
// ConnectTimeout, and the other negative counts and durations that were
// read as "none" or "no limit", and Options bits no option has; its error
// names the field.
func TestNegativeInfoTimeouts(t *testing.T) {
	p := []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}
	for field, info := range map[string]core.Info{
		"CloseTimeout":     {EventLib: "epoll", Protocols: p, CloseTimeout: -time.Second},
		"ConnectTimeout":   {EventLib: "epoll", Protocols: p, ConnectTimeout: -1},
		"IdleTimeout":      {EventLib: "epoll", Protocols: p, IdleTimeout: -1},
		"CountThreads":     {EventLib: "epoll", Protocols: p, CountThreads: -2},
		"FDLimit":          {EventLib: "epoll", Protocols: p, FDLimit: -1},
		"FDLimitPerThread": {EventLib: "epoll", Protocols: p, FDLimitPerThread: -1},
		"MaxConnsPerIP":    {EventLib: "epoll", Protocols: p, MaxConnsPerIP: -1},
		"Options":          {Protocols: p, Options: core.OptionEvlibPoll | 1<<40},
		// Counts and durations of nested structs too: they were taken
		// in silence, a negative RxChunk as "no cap", negative keepalive
		// parameters as the system's.
		"RxChunk":            {EventLib: "epoll", Protocols: []core.Protocol{{Name: "p", Callback: p[0].Callback, RxChunk: -1}}},
		"Keepalive.Interval": {EventLib: "epoll", Protocols: p, Keepalive: core.Keepalive{Idle: time.Second, Interval: -time.Second}},
		"Keepalive.Probes":   {EventLib: "epoll", Protocols: p, Keepalive: core.Keepalive{Idle: time.Second, Probes: -1}},
	} {
		ctx, err := core.New(info)
		require.ErrorIs(t, err, core.ErrInvalid, field)
		require.ErrorContains(t, err, field)
		require.Nil(t, ctx)
	}
}

// Info.Foreign holds one loop per service thread; one more is a loop no
// thread would ever serve, which New used to accept in silence.
func TestForeignEntriesBeyondThreads(t *testing.T) {
	p := []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}
	ctx, err := core.New(core.Info{EventLib: "poll", Protocols: p, Foreign: []any{nil, nil}})
	require.ErrorIs(t, err, core.ErrInvalid)
	require.Nil(t, ctx)
	ctx, err = core.New(core.Info{EventLib: "poll", Protocols: p, CountThreads: 2, Foreign: []any{nil, nil, nil}})
	require.ErrorIs(t, err, core.ErrInvalid)
	require.Nil(t, ctx)
}

// Adopting a net.Conn, net.PacketConn or net.Listener the caller already
// closed is a closed descriptor: ErrBadFD, as the sentinel's doc says. It
// returned net's error alone, which matches no plugloop sentinel.
func TestAdoptClosedNetConn(t *testing.T) {
	ctx, _ := socketpairConn(t, core.Info{EventLib: "epoll"}, func(core.Event) error { return nil })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.NoError(t, ln.Close())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, pc.Close())

	_, err = ctx.AdoptConn(c, "")
	require.ErrorIs(t, err, core.ErrBadFD)
	require.ErrorIs(t, err, net.ErrClosed, "net's reason is kept")
	_, err = ctx.AdoptPacketConn(pc, "")
	require.ErrorIs(t, err, core.ErrBadFD)
	_, err = ctx.AdoptListener(ln, "")
	require.ErrorIs(t, err, core.ErrBadFD)
}

// AdoptFD takes connected stream sockets, AdoptConn stream connections. A
// datagram socket adopted so took an empty datagram for the end of the
// stream, and a listener failed its first read with ENOTCONN; both are
// ErrInvalid now, naming the call that takes them, and the caller keeps
// what it passed.
func TestAdoptNonStream(t *testing.T) {
	ctx, _ := socketpairConn(t, core.Info{EventLib: "epoll"}, func(core.Event) error { return nil })
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	require.NoError(t, err)
	defer unix.Close(udp)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	require.NoError(t, err)
	defer f.Close()
	for fd, call := range map[int]string{udp: "AdoptPacketConn", int(f.Fd()): "AdoptListener"} {
		c, err := ctx.AdoptFD(fd, "")
		require.ErrorIs(t, err, core.ErrInvalid)
		require.ErrorContains(t, err, call)
		require.Nil(t, c)
		_, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		require.NoError(t, err, "the caller keeps its fd")
	}
	uc, err := net.Dial("udp", "127.0.0.1:9")
	require.NoError(t, err)
	defer uc.Close()
	c, err := ctx.AdoptConn(uc, "")
	require.ErrorIs(t, err, core.ErrInvalid)
	require.ErrorContains(t, err, "AdoptPacketConn")
	require.Nil(t, c)
	_, err = uc.Write([]byte("still mine"))
	require.NoError(t, err, "the caller keeps its connection")
	_, err = ctx.AdoptConn(nil, "")
	require.ErrorIs(t, err, core.ErrInvalid)
}
