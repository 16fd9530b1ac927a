//go:build unix

package core_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

var backends = []string{"poll", "epoll"}

// serviceUntil runs passes on the calling goroutine until cond holds.
func serviceUntil(t *testing.T, ctx *core.Context, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "condition not reached")
		require.NoError(t, ctx.Thread(0).Service(10*time.Millisecond))
	}
}

// dialListener makes ctx listen on a loopback TCP port for its first
// protocol and connects to it; the connection closes with the test.
func dialListener(t *testing.T, ctx *core.Context) net.Conn {
	t.Helper()
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
	require.NoError(t, err)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// A pipe's lifecycle: RAW_ADOPT_FILE, RAW_RX_FILE when readable (the
// callback reads), RAW_WRITEABLE_FILE with Conn.Write, and RAW_CLOSE_FILE
// when the writer goes away.
func TestPipeLifecycle(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var reasons []core.Reason
			var got []byte
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				if ev.Conn == nil || ev.Reason < core.ReasonRawAdoptFile {
					return nil // the poll-fd reasons
				}
				reasons = append(reasons, ev.Reason)
				switch ev.Reason {
				case core.ReasonRawRXFile:
					require.Nil(t, ev.Data, "the core does not read files")
					var b [64]byte
					n, _ := unix.Read(ev.Conn.FD(), b[:])
					got = append(got, b[:max(n, 0)]...)
				case core.ReasonRawWriteableFile:
					_, err := ev.Conn.Write([]byte("out"))
					return err
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()

			var in, out [2]int
			require.NoError(t, unix.Pipe(in[:]))
			require.NoError(t, unix.Pipe(out[:]))
			defer unix.Close(out[0])
			rc, err := ctx.AdoptFile(in[0], "")
			require.NoError(t, err)
			wc, err := ctx.AdoptFile(out[1], "")
			require.NoError(t, err)

			unix.Write(in[1], []byte("hello"))
			serviceUntil(t, ctx, func() bool { return len(got) == 5 })
			require.Equal(t, "hello", string(got))

			require.NoError(t, wc.CallbackOnWritable())
			serviceUntil(t, ctx, func() bool { return len(reasons) > 0 && reasons[len(reasons)-1] == core.ReasonRawWriteableFile })
			var b [8]byte
			n, err := unix.Read(out[0], b[:])
			require.NoError(t, err)
			require.Equal(t, "out", string(b[:n]))

			unix.Close(in[1]) // FIFO EOF
			serviceUntil(t, ctx, rc.Closed)
			require.Equal(t, core.ReasonRawCloseFile, reasons[len(reasons)-1])
			require.Equal(t, core.ReasonRawAdoptFile, reasons[0])
		})
	}
}

// A paused pipe whose writer has gone is taken out of the poll set: its
// hang-up is reported whatever the interest, and would end every wait.
// Resume puts it back; the callback reads what is left, and end of file
// closes it.
func TestPausedPipeHangup(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var conn *core.Conn
			var rxs, dels int
			var got []byte
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonDelPollFD:
					if conn != nil && ev.Poll.FD == conn.FD() && !conn.Closed() {
						dels++
					}
				case core.ReasonRawRXFile:
					if rxs++; rxs == 1 {
						return ev.Conn.RxFlowControl(false) // read it later
					}
					var b [16]byte
					n, _ := unix.Read(ev.Conn.FD(), b[:])
					got = append(got, b[:max(n, 0)]...)
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			var p [2]int
			require.NoError(t, unix.Pipe(p[:]))
			conn, err = ctx.AdoptFile(p[0], "")
			require.NoError(t, err)
			_, err = unix.Write(p[1], []byte("x"))
			require.NoError(t, err)
			serviceUntil(t, ctx, func() bool { return rxs == 1 })
			require.NoError(t, unix.Close(p[1]))
			serviceUntil(t, ctx, func() bool { return dels == 1 })
			require.False(t, conn.Closed(), "closed while paused, with input left")

			require.NoError(t, conn.RxFlowControl(true))
			serviceUntil(t, ctx, conn.Closed)
			require.Equal(t, "x", string(got))
			require.Equal(t, 1, dels, "DEL_POLL_FD again at close")
		})
	}
}

func TestRegularFileRefused(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			f, err := os.Create(filepath.Join(t.TempDir(), "f"))
			require.NoError(t, err)
			defer f.Close()
			_, err = ctx.AdoptFile(int(f.Fd()), "")
			require.ErrorIs(t, err, core.ErrNotPollable)
			_, err = f.Write([]byte("still mine")) // the caller keeps the fd
			require.NoError(t, err)
		})
	}
}

// Bytes read before adoption come first, then what the socket brings.
func TestAdoptWithReadbuf(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			var got []byte
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				if ev.Reason == core.ReasonRawRX {
					got = append(got, ev.Data...)
				}
				if ev.Reason == core.ReasonRawAdopt {
					require.Equal(t, "mine", ev.Conn.User())
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			srv, peer := testkit.TCPPair(t)
			_, err = ctx.AdoptConn(srv, "", core.WithReadbuf([]byte("early ")), core.WithUser("mine"))
			require.NoError(t, err)
			peer.Write([]byte("late"))
			serviceUntil(t, ctx, func() bool { return len(got) == 10 })
			require.Equal(t, "early late", string(got))
		})
	}
}

// WithReadbuf has no place on a file (its RAW_RX_FILE carries no data) or a
// datagram socket (each RAW_RX carries its sender): those adoptions refuse
// it, and the caller keeps what it handed in.
func TestReadbufRefusedOffStreams(t *testing.T) {
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	early := core.WithReadbuf([]byte("early"))

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	_, err = ctx.AdoptFile(int(r.Fd()), "", early)
	require.ErrorIs(t, err, core.ErrInvalid)

	_, err = ctx.ListenUDP("udp4", "127.0.0.1:0", "", early)
	require.ErrorIs(t, err, core.ErrInvalid)

	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	_, err = ctx.AdoptPacketConn(pc, "", early)
	require.ErrorIs(t, err, core.ErrInvalid)
	_, err = pc.WriteTo([]byte("x"), pc.LocalAddr()) // still the caller's
	require.NoError(t, err)
	_, err = w.Write([]byte("x"))
	require.NoError(t, err)
}

// UDP: each datagram is one RAW_RX with its sender; WRITEABLE requests are
// granted on the next pass; WriteTo answers.
func TestUDPEcho(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			type reply struct {
				data []byte
				to   netip.AddrPort
			}
			var queue []reply
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "udp", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonRawRX:
					queue = append(queue, reply{append([]byte(nil), ev.Data...), ev.From})
					return ev.Conn.CallbackOnWritable()
				case core.ReasonRawWriteable:
					if len(queue) == 0 {
						return nil
					}
					r := queue[0]
					queue = queue[1:]
					if _, err := ev.Conn.WriteTo(r.data, r.to); err != nil {
						return err
					}
					if len(queue) > 0 {
						return ev.Conn.CallbackOnWritable()
					}
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			srv, err := ctx.ListenUDP("udp4", "127.0.0.1:0", "")
			require.NoError(t, err)
			unbound, err := ctx.ListenUDP("udp4", "", "")
			require.NoError(t, err)
			require.False(t, unbound.Closed())

			cl, err := net.ListenPacket("udp4", "127.0.0.1:0")
			require.NoError(t, err)
			defer cl.Close()
			to := srv.LocalAddr()
			for _, m := range []string{"one", "two", "three"} {
				_, err := cl.WriteTo([]byte(m), to)
				require.NoError(t, err)
			}
			done := make(chan []string)
			go func() {
				var got []string
				buf := make([]byte, 64)
				cl.SetReadDeadline(time.Now().Add(10 * time.Second))
				for len(got) < 3 {
					n, from, err := cl.ReadFrom(buf)
					if err != nil {
						break
					}
					assert.Equal(t, to.String(), from.String())
					got = append(got, string(buf[:n]))
				}
				done <- got
			}()
			var got []string
			serviceUntil(t, ctx, func() bool {
				select {
				case got = <-done:
					return true
				default:
					return false
				}
			})
			require.Equal(t, []string{"one", "two", "three"}, got)
		})
	}
}

// WriteTo takes an IPv4 peer on a dual-stack socket (network "udp"), as an
// IPv4-mapped address, which every system accepts (a plain sockaddr_in on
// an IPv6 socket only Linux does), and an IPv4-mapped peer on an IPv4
// socket.
func TestUDPWriteToAcrossFamilies(t *testing.T) {
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer peer.Close()
	to := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	mapped := netip.AddrPortFrom(netip.AddrFrom16(to.Addr().As16()), to.Port())
	send := map[*core.Conn]netip.AddrPort{}
	errs := make(chan error, 2)
	ctx, err := core.New(core.Info{Protocols: []core.Protocol{{Name: "udp", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawWriteable {
			_, err := ev.Conn.WriteTo([]byte("to "+send[ev.Conn].String()), send[ev.Conn])
			errs <- err
		}
		return nil
	}}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	dual, err := ctx.ListenUDP("udp", "", "")
	require.NoError(t, err)
	v4, err := ctx.ListenUDP("udp4", "", "")
	require.NoError(t, err)
	// Address "" binds every local address and a port of the kernel's at
	// once, as ":0" does.
	for _, c := range []*core.Conn{dual, v4} {
		a := c.LocalAddr().(*net.UDPAddr)
		require.True(t, a.IP.IsUnspecified(), "local address %v", a)
		require.NotZero(t, a.Port, "local address %v", a)
	}
	send[dual], send[v4] = to, mapped
	require.NoError(t, dual.CallbackOnWritable())
	require.NoError(t, v4.CallbackOnWritable())
	serviceUntil(t, ctx, func() bool { return len(errs) == 2 })
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	got := map[string]bool{}
	buf := make([]byte, 64)
	require.NoError(t, peer.SetReadDeadline(time.Now().Add(10*time.Second)))
	for range 2 {
		n, _, err := peer.ReadFrom(buf)
		require.NoError(t, err)
		got[string(buf[:n])] = true
	}
	require.Equal(t, map[string]bool{"to " + to.String(): true, "to " + mapped.String(): true}, got)
}
