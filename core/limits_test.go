//go:build unix

package core_test

import (
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// At the fd limit the listener stops accepting: further connections wait in
// the backlog, and one is taken as soon as a connection closes.
func TestAcceptStopsAtFDLimit(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var open []*core.Conn
			adopted := 0
			ctx, err := core.New(core.Info{EventLib: lib, FDLimit: 3, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawAdopt:
					adopted++
					open = append(open, ev.Conn)
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
			require.NoError(t, err)
			var clients []net.Conn
			for range 4 {
				c, err := net.Dial("tcp", ln.Addr().String())
				require.NoError(t, err)
				defer c.Close()
				clients = append(clients, c)
			}
			serviceUntil(t, ctx, func() bool { return adopted == 2 }) // the listener holds the third fd
			for range 5 {
				require.NoError(t, ctx.Thread(0).Service(5*time.Millisecond))
			}
			require.Equal(t, 2, adopted, "no accept beyond the limit")
			for _, c := range clients[2:] {
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				_, err := c.Read(make([]byte, 1))
				require.ErrorIs(t, err, os.ErrDeadlineExceeded, "waiting in the backlog, not accepted and dropped")
			}
			require.NoError(t, open[0].Close())
			serviceUntil(t, ctx, func() bool { return adopted == 3 })
		})
	}
}

// Connections beyond MaxConnsPerIP from one address are closed before
// RAW_ADOPT.
// Room freed by anything, not only a closed connection, resumes accepting:
// here a Connect that held the last place fails.
func TestAcceptResumesWhenConnectFails(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			black := blackHole(t)

			var adopted, connErrs int
			ctx, err := core.New(core.Info{EventLib: lib, FDLimit: 2, ConnectTimeout: 200 * time.Millisecond,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
					switch ev.Reason {
					case core.ReasonRawAdopt:
						adopted++
					case core.ReasonClientConnectionError:
						connErrs++
					}
					return nil
				}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "") // place 1 of 2
			require.NoError(t, err)
			_, err = ctx.Connect("tcp4", black, "") // place 2 of 2, in progress
			require.NoError(t, err)
			peer, err := net.Dial("tcp", ln.Addr().String()) // waits in the backlog
			require.NoError(t, err)
			defer peer.Close()
			serviceUntil(t, ctx, func() bool { return connErrs == 1 }) // ConnectTimeout: room again
			serviceUntil(t, ctx, func() bool { return adopted == 1 })
		})
	}
}

// blackHole returns the address of a listener whose one-place backlog is
// full, so it drops SYNs: a connect to it stays in progress until it
// times out.
func blackHole(t *testing.T) string {
	bfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(bfd) })
	require.NoError(t, unix.Bind(bfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(bfd, 0))
	sa, err := unix.Getsockname(bfd)
	require.NoError(t, err)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	filler, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { filler.Close() })
	return addr
}

func TestMaxConnsPerIP(t *testing.T) {
	adopted := 0
	ctx, err := core.New(core.Info{MaxConnsPerIP: 2, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawAdopt {
			adopted++
		}
		return nil
	}}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	var clients []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		clients = append(clients, c)
	}
	closed := 0
	serviceUntil(t, ctx, func() bool {
		closed = 0
		for _, c := range clients {
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				closed++
			}
		}
		return adopted == 2 && closed == 2
	})
}

// The default cap is the process' fd limit less a reserve of 64 for the
// descriptors that are not connections, so that accept stops at the cap,
// connections waiting in the backlog, before accept(2) meets EMFILE. A
// backend that holds a dup of every fd it watches (evlib.Descriptor.
// DupsPerFD) gets half of that, so that the dup cannot fail with EMFILE and
// drop the connection. An explicit FDLimit is taken as given.
func TestFDLimitCountsBackendDups(t *testing.T) {
	d, err := evlib.Lookup("poll")
	require.NoError(t, err)
	d.Name, d.Flag, d.DupsPerFD = "poll-with-dups", 0, 1
	if _, err := evlib.Lookup(d.Name); err != nil { // registered by an earlier -count run
		require.NoError(t, evlib.Register(d))
	}
	var rl unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &rl))
	proto := []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}
	for _, c := range []struct {
		lib           string
		threads, want int
		limit         int
	}{
		{"poll", 1, int(rl.Cur) - 64, 0},
		{"poll", 2, (int(rl.Cur) - 64) / 2, 0},
		{"poll", 1, 100, 100},
		{"poll-with-dups", 1, (int(rl.Cur) - 64) / 2, 0},
		{"poll-with-dups", 2, (int(rl.Cur) - 64) / 2 / 2, 0},
		{"poll-with-dups", 2, 50, 100},
	} {
		ctx, err := core.New(core.Info{EventLib: c.lib, CountThreads: c.threads, FDLimit: c.limit, Protocols: proto})
		require.NoError(t, err)
		for i := range ctx.CountThreads() {
			require.Equal(t, c.want, ctx.Thread(i).FDLimit(), "%s, %d threads, FDLimit %d: thread %d", c.lib, c.threads, c.limit, i)
		}
		require.NoError(t, ctx.Destroy())
	}
}

// AdoptFD and Listen stop at Info.FDLimit with ErrFDLimit, placed or
// pinned with OnThread, and the caller keeps the fd; a close makes room.
func TestAdoptStopsAtFDLimit(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, err := core.New(core.Info{EventLib: lib, FDLimit: 2, Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			fd1, _ := socketPair(t)
			fd2, _ := socketPair(t)
			fd3, _ := socketPair(t)
			c1, err := ctx.AdoptFD(fd1, "")
			require.NoError(t, err)
			_, err = ctx.AdoptFD(fd2, "", core.OnThread(0))
			require.NoError(t, err)

			_, err = ctx.AdoptFD(fd3, "")
			require.ErrorIs(t, err, core.ErrFDLimit, "AdoptFD beyond the limit")
			_, err = ctx.AdoptFD(fd3, "", core.OnThread(0))
			require.ErrorIs(t, err, core.ErrFDLimit, "AdoptFD with OnThread beyond the limit")
			_, err = ctx.Listen("tcp", "127.0.0.1:0", "")
			require.ErrorIs(t, err, core.ErrFDLimit, "Listen beyond the limit")
			_, err = unix.FcntlInt(uintptr(fd3), unix.F_GETFD, 0)
			require.NoError(t, err, "a refused fd stays the caller's")

			require.NoError(t, c1.Close())
			_, err = ctx.AdoptFD(fd3, "", core.OnThread(0))
			require.NoError(t, err, "room made by a close")
		})
	}
}
