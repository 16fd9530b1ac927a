//go:build unix

package core_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

type clientLog struct {
	adopted, rx []string
	errs        []error
}

func clientCtx(t *testing.T, lib string, info core.Info) (*core.Context, *clientLog) {
	log := &clientLog{}
	info.EventLib = lib
	info.Protocols = []core.Protocol{
		{Name: "client", Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				log.adopted = append(log.adopted, "client")
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				_, err := ev.Conn.Write([]byte("hi"))
				return err
			case core.ReasonRawRX:
				log.rx = append(log.rx, string(ev.Data))
			case core.ReasonClientConnectionError:
				require.NotNil(t, ev.Conn)
				log.errs = append(log.errs, ev.Err)
			}
			return nil
		}},
		{Name: "server", Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				log.adopted = append(log.adopted, "server")
			case core.ReasonRawRX:
				ev.Conn.SetUser(string(ev.Data))
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				_, err := ev.Conn.Write([]byte("re:" + ev.Conn.User().(string)))
				return err
			}
			return nil
		}},
	}
	ctx, err := core.New(info)
	require.NoError(t, err)
	t.Cleanup(func() { ctx.Destroy() })
	return ctx, log
}

func TestConnect(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, log := clientCtx(t, lib, core.Info{})
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "server")
			require.NoError(t, err)
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			for _, addr := range []string{ln.Addr().String(), "localhost:" + port} {
				c, err := ctx.Connect("tcp4", addr, "client")
				require.NoError(t, err)
				require.True(t, c.Connecting(), "identifiable before any callback")
				n := len(log.rx)
				serviceUntil(t, ctx, func() bool { return len(log.rx) > n })
				require.Equal(t, "re:hi", log.rx[len(log.rx)-1])
				require.False(t, c.Connecting())
			}
			require.Empty(t, log.errs)
		})
	}
}

// A client connection's idle timeout counts from when it is established:
// on a context older than IdleTimeout, a quiet one is not closed at once.
func TestConnectIdleTimeout(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			const idle = 500 * time.Millisecond
			var closeErr error
			ctx, err := core.New(core.Info{EventLib: lib, IdleTimeout: idle, Protocols: []core.Protocol{{Name: "quiet", Callback: func(ev core.Event) error {
				if ev.Reason == core.ReasonRawClose {
					closeErr = ev.Err
				}
				return nil
			}}}})
			require.NoError(t, err)
			defer ctx.Destroy()
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "")
			require.NoError(t, err)
			time.Sleep(idle + 100*time.Millisecond) // the context is older than IdleTimeout
			c, err := ctx.Connect("tcp4", ln.Addr().String(), "")
			require.NoError(t, err)
			serviceUntil(t, ctx, func() bool { return !c.Connecting() })
			for range 3 {
				require.NoError(t, ctx.Thread(0).Service(0)) // due timers run here
			}
			require.False(t, c.Closed(), "closed right after it was established: %v", closeErr)
			serviceUntil(t, ctx, c.Closed) // and the timeout still applies
		})
	}
}

// A connect that fails at once still reports through the Conn that
// Connect returned: CLIENT_CONNECTION_ERROR comes after Connect returns.
func TestConnectFailsAfterReturn(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, log := clientCtx(t, lib, core.Info{})
			c, err := ctx.Connect("unix", filepath.Join(t.TempDir(), "nobody"), "client")
			require.NoError(t, err)
			require.Empty(t, log.errs, "CLIENT_CONNECTION_ERROR inside Connect")
			require.True(t, c.Connecting())
			serviceUntil(t, ctx, func() bool { return len(log.errs) > 0 })
			require.ErrorIs(t, log.errs[0], unix.ENOENT)
			require.True(t, c.Closed())
		})
	}
}

// A unix listener with a full backlog refuses a connect with EAGAIN: that
// attempt failed, it is not in progress.
func TestConnectUnixBacklogFull(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s")
			lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			require.NoError(t, err)
			defer unix.Close(lfd)
			require.NoError(t, unix.Bind(lfd, &unix.SockaddrUnix{Name: path}))
			require.NoError(t, unix.Listen(lfd, 0)) // never accepts
			ctx, log := clientCtx(t, lib, core.Info{})
			const n = 8
			var conns []*core.Conn
			for range n {
				c, err := ctx.Connect("unix", path, "client")
				require.NoError(t, err)
				conns = append(conns, c)
			}
			serviceUntil(t, ctx, func() bool {
				for _, c := range conns {
					if c.Connecting() {
						return false
					}
				}
				return true
			})
			// The backlog takes one or two; the rest fail, not adopted.
			require.GreaterOrEqual(t, len(log.errs), n-2, "adopted: %v", log.adopted)
			for _, err := range log.errs {
				require.ErrorIs(t, err, unix.EAGAIN)
			}
			require.Equal(t, n, len(log.errs)+len(log.adopted))
		})
	}
}

// An event for a socket still connecting that is not its own (an
// application's loop can hand over revents of an fd closed earlier in its
// iteration, whose number the socket then got) does not establish it.
func TestConnectIgnoresStaleEvent(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, log := clientCtx(t, lib, core.Info{ConnectTimeout: time.Minute})
			c, err := ctx.Connect("tcp4", blackHole(t), "client")
			require.NoError(t, err)
			th := ctx.Thread(0)
			serviceUntil(t, ctx, func() bool { return c.FD() >= 0 }) // the attempt started
			reported := false
			require.NoError(t, th.Post(func() { th.ReportReady(c.FD(), evlib.Writable); reported = true }))
			serviceUntil(t, ctx, func() bool { return reported })
			require.NoError(t, th.Service(0))
			require.True(t, c.Connecting(), "established by an event that was not its own")
			require.Empty(t, log.adopted)
		})
	}
}

func TestConnectRefused(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			ctx, log := clientCtx(t, lib, core.Info{})
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			addr := l.Addr().String()
			l.Close() // nobody listens there now
			c, err := ctx.Connect("tcp", addr, "client")
			require.NoError(t, err)
			serviceUntil(t, ctx, func() bool { return len(log.errs) > 0 })
			require.ErrorIs(t, log.errs[0], unix.ECONNREFUSED)
			require.True(t, c.Closed())
			require.Empty(t, log.adopted)
		})
	}
}

// A listener whose backlog is full drops SYNs, so the connect never
// finishes: ConnectTimeout ends it.
func TestConnectTimeout(t *testing.T) {
	ctx, log := clientCtx(t, "epoll", core.Info{ConnectTimeout: 100 * time.Millisecond})
	ip := netip.MustParseAddr("127.0.0.1")
	port := testkit.ListenShared(t, testkit.Spot{Addr: ip, Stalled: true})[0].Port
	_, err := ctx.Connect("tcp", netip.AddrPortFrom(ip, uint16(port)).String(), "client")
	require.NoError(t, err)
	serviceUntil(t, ctx, func() bool { return len(log.errs) > 0 })
	require.ErrorIs(t, log.errs[0], core.ErrTimeout)
}

func TestConnectAbortAndDestroy(t *testing.T) {
	ctx, log := clientCtx(t, "epoll", core.Info{})
	c, err := ctx.Connect("tcp", "localhost:1", "client") // resolution in flight
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.ErrorIs(t, log.errs[0], core.ErrClosed)
	_, err = ctx.Connect("tcp", "localhost:1", "client")
	require.NoError(t, err)
	require.NoError(t, ctx.Destroy())
	require.ErrorIs(t, log.errs[1], core.ErrDestroyed)
}

// Every descriptor plugloop opens — the backend's, the wake fd, a
// listener, an accepted and a client connection, a UDP socket of its own —
// is close-on-exec, so a program that starts a subprocess leaks none of
// them into it. (Creating them with the flag in one call, where the system
// allows it, also keeps a fork on another goroutine from copying one in
// the moment before the flag is set; no test can catch that moment.)
func TestDescriptorsCloseOnExec(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			before := map[string]bool{}
			for _, fd := range openFDs(t) {
				before[fd] = true
			}
			ctx, log := clientCtx(t, lib, core.Info{})
			ln, err := ctx.Listen("tcp", "127.0.0.1:0", "server")
			require.NoError(t, err)
			_, err = ctx.Connect("tcp", ln.Addr().String(), "client")
			require.NoError(t, err)
			_, err = ctx.ListenUDP("udp4", "", "server")
			require.NoError(t, err)
			serviceUntil(t, ctx, func() bool { return len(log.adopted) == 3 }) // UDP, client, accepted
			fresh := 0
			for _, name := range openFDs(t) {
				if before[name] {
					continue
				}
				fresh++
				fd, _ := strconv.Atoi(name)
				flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
				require.NoError(t, err)
				require.NotZero(t, flags&unix.FD_CLOEXEC, "fd %d is not close-on-exec", fd)
			}
			require.GreaterOrEqual(t, fresh, 4) // listener, two connections, UDP
		})
	}
}

// staticResolver answers Info.Resolver lookups from a table.
type staticResolver map[string][]netip.Addr

func (r staticResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if ips, ok := r[host]; ok {
		return ips, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// panicResolver stands for an application's resolver that panics.
type panicResolver struct{}

func (panicResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	panic("resolver bug")
}

// blockingResolver stands for a lookup that hangs until its context ends,
// which it tells on ended.
type blockingResolver struct{ started, ended chan struct{} }

func (r blockingResolver) LookupNetIP(ctx context.Context, _, _ string) ([]netip.Addr, error) {
	close(r.started)
	<-ctx.Done()
	close(r.ended)
	return nil, ctx.Err()
}

// Destroy ends a lookup in flight: the resolver's goroutine does not
// outlive the context (it used to, until ConnectTimeout).
func TestDestroyEndsLookup(t *testing.T) {
	r := blockingResolver{make(chan struct{}), make(chan struct{})}
	ctx, _ := clientCtx(t, "epoll", core.Info{Resolver: r, ConnectTimeout: time.Hour})
	_, err := ctx.Connect("tcp", "slow.test:80", "client")
	require.NoError(t, err)
	<-r.started
	require.NoError(t, ctx.Destroy())
	select {
	case <-r.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the lookup still runs 10 s after Destroy")
	}
}

// Info.Resolver answers for host names: its error, or its panic (on a
// goroutine of the core's, where nothing else could recover it), fails the
// connection with CLIENT_CONNECTION_ERROR instead of the process.
func TestConnectResolverFails(t *testing.T) {
	for _, r := range []core.Resolver{staticResolver{}, panicResolver{}} {
		ctx, log := clientCtx(t, "epoll", core.Info{Resolver: r})
		c, err := ctx.Connect("tcp", "nowhere.test:80", "client")
		require.NoError(t, err)
		serviceUntil(t, ctx, func() bool { return len(log.errs) > 0 })
		require.ErrorContains(t, log.errs[0], "resolving nowhere.test")
		require.True(t, c.Closed())
		require.Empty(t, log.adopted)
	}
}

// Close or Abort of a connecting connection inside a poll-fd callback about
// one of its own sockets gives it up once the core's step that made the
// change is done (ReasonLockPoll): the call returns nil and the connection
// is still Connecting after it; CLIENT_CONNECTION_ERROR, with ErrClosed,
// comes once, outside any LOCK_POLL/UNLOCK_POLL bracket, after every socket
// of the connection was deleted, and nothing for the connection follows it.
// "Refused" gives up in the DEL_POLL_FD of an attempt the address refused,
// which made the core go on with a connection already failed (a nil
// dereference: the Model, seed 11 of 16 on epoll).
func TestConnectGivenUpInsideItsPollFD(t *testing.T) {
	at := map[string]func(core.Event) bool{
		"Add": func(ev core.Event) bool { return ev.Reason == core.ReasonAddPollFD },
		"Watch": func(ev core.Event) bool {
			return ev.Reason == core.ReasonChangeModePollFD && ev.Poll.Events&evlib.Writable != 0
		},
		"Promote": func(ev core.Event) bool {
			return ev.Reason == core.ReasonChangeModePollFD && ev.Poll.Events&evlib.Writable == 0
		},
		"Refused": func(ev core.Event) bool { return ev.Reason == core.ReasonDelPollFD },
	}
	for _, lib := range backends {
		for when, now := range at {
			for _, how := range []string{"Close", "Abort"} {
				t.Run(lib+"/"+when+"/"+how, func(t *testing.T) {
					var c *core.Conn
					var callErr, errEv error
					var gaveUp, connectingAfter bool
					var errs int
					var problems []string
					added, deleted := map[int]int{}, map[int]int{}
					inBracket := false
					ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
						switch ev.Reason {
						case core.ReasonLockPoll:
							inBracket = true
						case core.ReasonUnlockPoll:
							inBracket = false
						}
						if c == nil || ev.Conn != c {
							return nil
						}
						if errs > 0 {
							problems = append(problems, ev.Reason.String()+" after CLIENT_CONNECTION_ERROR")
						}
						switch ev.Reason {
						case core.ReasonAddPollFD:
							added[ev.Poll.FD]++
						case core.ReasonDelPollFD:
							deleted[ev.Poll.FD]++
						case core.ReasonClientConnectionError:
							errs++
							errEv = ev.Err
							if inBracket {
								problems = append(problems, "CLIENT_CONNECTION_ERROR inside a LOCK_POLL/UNLOCK_POLL bracket")
							}
							if len(deleted) != len(added) {
								problems = append(problems, "CLIENT_CONNECTION_ERROR before every socket was deleted")
							}
						case core.ReasonRawAdopt, core.ReasonRawClose:
							problems = append(problems, ev.Reason.String()+" of a connection given up")
						}
						if now(ev) && c.Connecting() && !gaveUp {
							gaveUp = true
							if how == "Close" {
								callErr = c.Close()
							} else {
								callErr = c.Abort()
							}
							connectingAfter = c.Connecting() && !c.Closed()
						}
						return nil
					}}}})
					require.NoError(t, err)
					defer ctx.Destroy()
					addr := ""
					if when == "Refused" {
						// Bound, never listening: refused.
						fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
						require.NoError(t, err)
						defer unix.Close(fd)
						require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
						sa, err := unix.Getsockname(fd)
						require.NoError(t, err)
						addr = fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
					} else {
						ln, err := net.Listen("tcp4", "127.0.0.1:0")
						require.NoError(t, err)
						defer ln.Close()
						addr = ln.Addr().String()
					}
					c, err = ctx.Connect("tcp4", addr, "p")
					require.NoError(t, err)
					serviceUntil(t, ctx, c.Closed)
					for range 3 {
						require.NoError(t, ctx.Thread(0).Service(0))
					}
					if !gaveUp {
						// The kernel refused the connect at once: no socket to
						// delete.
						require.Equal(t, "Refused", when)
						require.ErrorIs(t, errEv, unix.ECONNREFUSED)
						t.Skip("the connect was refused at once")
					}
					require.NoError(t, callErr)
					require.True(t, connectingAfter, "%s inside a poll-fd callback took effect before the core's step was done", how)
					require.Empty(t, problems)
					require.Equal(t, 1, errs, "CLIENT_CONNECTION_ERROR")
					require.ErrorIs(t, errEv, core.ErrClosed)
					require.NotEmpty(t, added)
					require.Equal(t, added, deleted, "every socket added for the connection deleted once")
					for fd := range added {
						if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
							// The number may be reused by now; it must not
							// be the connection's socket still.
							sa, _ := unix.Getpeername(fd)
							require.Nil(t, sa, "fd %d of the given-up connection still open and connected", fd)
						}
					}
				})
			}
		}
	}
}

// Close or Abort of a connecting connection inside another connection's
// callback (a proxy whose client left while its upstream connects) gives it
// up once that callback returned, as a close does: CLIENT_CONNECTION_ERROR
// never comes nested in the callback that asked for it. Output on a
// connection not established yet is refused with ErrInvalid, not ErrClosed.
func TestConnectGivenUpInsideAnotherCallback(t *testing.T) {
	for _, lib := range backends {
		for _, how := range []string{"Close", "Abort"} {
			t.Run(lib+"/"+how, func(t *testing.T) {
				var c *core.Conn
				var callErr, againErr, errEv error
				var nested, connectingAfter bool
				var errs int
				inAdopt := false
				ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
					switch {
					case ev.Reason == core.ReasonClientConnectionError && ev.Conn == c:
						errs++
						errEv = ev.Err
						nested = nested || inAdopt
					case ev.Reason == core.ReasonRawAdopt && ev.Conn != c:
						inAdopt = true
						if how == "Close" {
							callErr = c.Close()
						} else {
							callErr = c.Abort()
						}
						connectingAfter = c.Connecting() && !c.Closed()
						againErr = c.Close()
						inAdopt = false
					}
					return nil
				}}}})
				require.NoError(t, err)
				defer ctx.Destroy()
				ln, err := net.Listen("tcp4", "127.0.0.1:0")
				require.NoError(t, err)
				defer ln.Close()
				c, err = ctx.Connect("tcp4", ln.Addr().String(), "p")
				require.NoError(t, err)
				require.ErrorIs(t, c.CallbackOnWritable(), core.ErrInvalid, "CallbackOnWritable while connecting")
				_, werr := c.Write([]byte("x"))
				require.ErrorIs(t, werr, core.ErrInvalid, "Write while connecting")
				fd, peer := socketPair(t)
				defer peer.Close()
				_, err = ctx.AdoptFD(fd, "p")
				require.NoError(t, err)
				serviceUntil(t, ctx, c.Closed)
				require.NoError(t, callErr)
				require.True(t, connectingAfter, "%s inside another connection's callback took effect before it returned", how)
				require.ErrorIs(t, againErr, core.ErrClosed, "a second Close before the first took effect")
				require.False(t, nested, "CLIENT_CONNECTION_ERROR nested in the callback that gave the connection up")
				require.Equal(t, 1, errs, "CLIENT_CONNECTION_ERROR")
				require.ErrorIs(t, errEv, core.ErrClosed)
				require.Equal(t, -1, c.FD())
			})
		}
	}
}
