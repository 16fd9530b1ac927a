//go:build unix

package core_test

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// closeCounting is a backend that counts its Close calls in closeCount.
type closeCounting struct{ evlib.Backend }

// closeCount is package-wide because the registry is process-wide.
var closeCount atomic.Int32

func (b closeCounting) Close() error {
	closeCount.Add(1)
	return b.Backend.Close()
}

// registerCloseCounting registers "poll-counting-close", the poll backend
// counting its Close calls.
func registerCloseCounting(t *testing.T) string {
	const name = "poll-counting-close"
	registerWrappedPoll(t, name, func(b evlib.Backend) evlib.Backend { return closeCounting{b} })
	return name
}

// registerWrappedPoll registers, once per process (the registry outlives
// a -count run), the poll backend under name, each instance wrapped by
// wrap: a test's way to change one method of a real backend.
func registerWrappedPoll(t *testing.T, name string, wrap func(evlib.Backend) evlib.Backend) {
	t.Helper()
	registerWrappedPollWithout(t, name, 0, wrap)
}

// registerWrappedPollWithout is registerWrappedPoll for a backend that
// declares poll's capabilities less drop.
func registerWrappedPollWithout(t *testing.T, name string, drop evlib.Caps, wrap func(evlib.Backend) evlib.Backend) {
	t.Helper()
	if _, err := evlib.Lookup(name); err == nil {
		return
	}
	d, err := evlib.Lookup("poll")
	require.NoError(t, err)
	poll := d.New
	d.Name, d.Flag, d.Priority = name, 0, -1
	d.Caps &^= drop
	d.New = func(cfg evlib.Config) (evlib.Backend, error) {
		b, err := poll(cfg)
		if err != nil {
			return nil, err
		}
		return wrap(b), nil
	}
	require.NoError(t, evlib.Register(d))
}

// Destruction is complete when PROTOCOL_DESTROY comes and Done is closed:
// every thread's backend is closed by then, so an application that owns
// the loop finds nothing of plugloop's left in it once Done is closed.
func TestDestroyClosesBackendsBeforeDone(t *testing.T) {
	name := registerCloseCounting(t)
	for _, threads := range []int{1, 3} {
		closeCount.Store(0)
		atDestroy := int32(-1)
		ctx, err := core.New(core.Info{EventLib: name, CountThreads: threads, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonProtocolDestroy {
				atDestroy = closeCount.Load()
			}
			return nil
		}}}})
		require.NoError(t, err)
		require.NoError(t, ctx.Destroy())
		<-ctx.Done()
		require.Equal(t, int32(threads), atDestroy, "backends closed when PROTOCOL_DESTROY came (%d threads)", threads)
		require.Equal(t, int32(threads), closeCount.Load(), "backends closed when Done was closed (%d threads)", threads)
	}
}

// Destroy called in a poll-fd callback of an adoption or of a client
// connection's connect, with the adoption or connect not done yet, stops
// it there: from Destroy on, nothing is delivered but RAW_CLOSE, the
// poll-fd reasons and PROTOCOL_DESTROY, and adopting returns ErrDestroyed
// with the fd still the caller's. An AdoptFD destroyed in its own
// ADD_POLL_FD returned the connection after its RAW_ADOPT, and a connect
// destroyed as its winner went back to reading got RAW_ADOPT.
func TestDestroyInsideAdoptionsPollFD(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib+"/AdoptFD", func(t *testing.T) {
			var ctx *core.Context
			var got []core.Reason
			fd := -1
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				if ev.Poll.FD != fd || fd < 0 {
					return nil
				}
				got = append(got, ev.Reason)
				if ev.Reason == core.ReasonAddPollFD {
					ctx.Destroy()
				}
				return nil
			}}}})
			require.NoError(t, err)
			p := nonblockSocketpair(t)
			defer unix.Close(p[1])
			fd = p[0]
			c, err := ctx.AdoptFD(fd, "p")
			require.ErrorIs(t, err, core.ErrDestroyed)
			require.Nil(t, c)
			<-ctx.Done()
			require.Equal(t, []core.Reason{core.ReasonLockPoll, core.ReasonAddPollFD, core.ReasonUnlockPoll,
				core.ReasonLockPoll, core.ReasonDelPollFD, core.ReasonUnlockPoll}, got)
			_, err = unix.Write(p[1], []byte("x"))
			require.NoError(t, err, "the caller's fd is open still")
			require.NoError(t, unix.Close(fd))
		})
		t.Run(lib+"/Connect", func(t *testing.T) {
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			var ctx *core.Context
			var got []core.Reason
			var connErr error
			ctx, err = core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch ev.Reason {
				case core.ReasonChangeModePollFD:
					if ev.Poll.Events == evlib.Readable && ev.Poll.PrevEvents&evlib.Writable != 0 {
						ctx.Destroy() // the winner, connected, goes back to reading
					}
				case core.ReasonRawAdopt, core.ReasonRawClose:
					got = append(got, ev.Reason)
				case core.ReasonClientConnectionError:
					got = append(got, ev.Reason)
					connErr = ev.Err
				}
				return nil
			}}}})
			require.NoError(t, err)
			_, err = ctx.Connect("tcp4", ln.Addr().String(), "p")
			require.NoError(t, err)
			for ctx.Thread(0).Service(time.Second) == nil {
			}
			<-ctx.Done()
			require.Equal(t, []core.Reason{core.ReasonClientConnectionError}, got)
			require.ErrorIs(t, connErr, core.ErrDestroyed)
		})
	}
}

// The same with the adoption nested in another's ADD_POLL_FD: Destroy in
// the inner one's ADD_POLL_FD stops both, each AdoptFD says ErrDestroyed,
// no RAW_ADOPT comes, and both fds are still the caller's.
func TestDestroyInsideNestedAdoptionsPollFD(t *testing.T) {
	for _, lib := range backends {
		t.Run(lib, func(t *testing.T) {
			x, y := nonblockSocketpair(t), nonblockSocketpair(t)
			for _, fd := range []int{x[0], x[1], y[0], y[1]} {
				defer unix.Close(fd)
			}
			var ctx *core.Context
			var reasons []core.Reason
			var inner error
			ctx, err := core.New(core.Info{EventLib: lib, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
				switch {
				case ev.Reason == core.ReasonAddPollFD && ev.Poll.FD == x[0]:
					_, inner = ctx.AdoptFD(y[0], "p")
				case ev.Reason == core.ReasonAddPollFD && ev.Poll.FD == y[0]:
					ctx.Destroy()
				case ev.Reason == core.ReasonRawAdopt, ev.Reason == core.ReasonRawClose:
					reasons = append(reasons, ev.Reason)
				}
				return nil
			}}}})
			require.NoError(t, err)
			c, err := ctx.AdoptFD(x[0], "p")
			require.ErrorIs(t, err, core.ErrDestroyed, "outer AdoptFD")
			require.Nil(t, c)
			require.ErrorIs(t, inner, core.ErrDestroyed, "inner AdoptFD")
			<-ctx.Done()
			require.Empty(t, reasons, "RAW_ADOPT or RAW_CLOSE")
			for _, fd := range []int{x[0], y[0]} {
				_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
				require.NoError(t, err, "fd %d is open still, the caller's", fd)
			}
		})
	}
}
