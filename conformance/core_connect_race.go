//go:build unix

package conformance

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// staticResolver answers Info.Resolver lookups from a table, so a host
// name can stand for addresses the test chose.
type staticResolver map[string][]netip.Addr

func (r staticResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if ips, ok := r[host]; ok {
		return ips, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// raceLoopbacks returns two loopback addresses a listener can each take
// on one port: on Linux 127.0.0.2 and 127.0.0.3, as every 127.0.0.0/8
// address is loopback there; elsewhere 127.0.0.1 and ::1, the two a
// system surely has, and the test is skipped if it has no IPv6 loopback.
func raceLoopbacks(t *testing.T) (netip.Addr, netip.Addr) {
	t.Helper()
	if runtime.GOOS == "linux" {
		return netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	}
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("conformance: no IPv6 loopback to race 127.0.0.1 against: %v", err)
	}
	l.Close()
	return netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
}

// linuxOnly skips a case that needs a connect to stay in progress, which
// only Linux's SYN drop at a full accept queue makes certain and at once
// on loopback (elsewhere a full queue may answer with a reset, or the
// system lacks the extra loopback addresses the case uses).
func linuxOnly(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("conformance: a stalled connect needs Linux's SYN drop at a full accept queue (running on %s)", runtime.GOOS)
	}
}

// Checklist 35: with several racing sockets per connection (Connect races
// a host name's addresses, RFC 8305 "Happy Eyeballs"), the losers are
// unregistered and closed, the winner is promoted without a second
// registration or an fd leak, and a failed primary with a successful racer
// works. The application sees RAW_ADOPT or CLIENT_CONNECTION_ERROR and
// nothing else; every fd added for the connection is deleted; the process
// holds the same descriptors and goroutines after the context as before.
func (s *suite) testConnectRacing(t *testing.T) {
	type outcome struct {
		remote string
	}
	newRace := func(t *testing.T, info core.Info, names staticResolver) (*harness, *outcome, func()) {
		t.Helper()
		baseFDs, baseG := openFDs(), runtime.NumGoroutine()
		out := &outcome{}
		var mu sync.Mutex
		info.Resolver = names
		info.Protocols = []core.Protocol{{Name: "client", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonRawAdopt {
				mu.Lock()
				out.remote = ev.Conn.RemoteAddr().String()
				mu.Unlock()
			}
			return nil
		}}}
		// After the context and what the suite's loop holds for it (a
		// foreign host's pipes go with the harness's cleanup, which runs
		// first): its fds closed, the resolver's and the loop's goroutines
		// ended.
		t.Cleanup(func() {
			checkGoroutines(t, baseG)
			checkFDs(t, baseFDs)
		})
		h := s.newHarness(t, info)
		h.start()
		done := func() {
			t.Helper()
			h.destroy()
			h.rec.final(t)
		}
		return h, out, done
	}
	connect := func(t *testing.T, h *harness, address string) *core.Conn {
		t.Helper()
		var c *core.Conn
		var err error
		h.do(func() { c, err = h.ctx.Connect("tcp", address, "client") })
		require.NoError(t, err)
		return c
	}
	// added returns the fds added for c, in order.
	added := func(h *harness, c *core.Conn) []int {
		var fds []int
		for _, e := range h.rec.snapshot() {
			if e.conn == c && e.reason == core.ReasonAddPollFD {
				fds = append(fds, e.fd)
			}
		}
		return fds
	}
	// each checks that every fd added for c was deleted exactly once and
	// that c got no callback but its poll changes and the one outcome.
	each := func(t *testing.T, h *harness, c *core.Conn, outcome core.Reason) {
		t.Helper()
		for _, fd := range added(h, c) {
			require.Equal(t, 1, h.rec.count(func(e event) bool {
				return e.conn == c && e.reason == core.ReasonDelPollFD && e.fd == fd
			}), "DEL_POLL_FD of racing fd %d", fd)
		}
		require.Equal(t, 1, h.rec.count(func(e event) bool { return e.conn == c && !isPollReason(e.reason) }),
			"callbacks for the connection other than its poll changes and one %v", outcome)
		require.Equal(t, 1, h.rec.count(is(outcome, c)))
	}

	t.Run("FailedPrimary", func(t *testing.T) {
		bad, good := raceLoopbacks(t)
		port := testkit.ListenShared(t, testkit.Spot{Addr: good})[0].Port // nothing listens on bad
		h, out, done := newRace(t, core.Info{ConnectAttemptDelay: time.Hour}, staticResolver{"race.test": {bad, good}})
		c := connect(t, h, "race.test:"+strconv.Itoa(port))
		h.rec.waitEvent(t, "RAW_ADOPT of the racer", is(core.ReasonRawAdopt, c))
		h.sync()
		require.Equal(t, netip.AddrPortFrom(good, uint16(port)).String(), out.remote)
		require.Equal(t, 1, h.rec.count(func(e event) bool { return e.conn == c && !isPollReason(e.reason) }),
			"callbacks for the connection other than its poll changes and RAW_ADOPT")
		var fd int
		var err error
		h.do(func() { fd = c.FD(); err = c.Close() })
		require.NoError(t, err)
		added := added(h, c)
		require.Equal(t, fd, added[len(added)-1], "the last attempt is the one promoted")
		h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
		done()
		for _, fd := range added {
			require.Equal(t, 1, h.rec.count(func(e event) bool { return e.conn == c && e.reason == core.ReasonDelPollFD && e.fd == fd }))
		}
		require.Zero(t, h.rec.count(is(core.ReasonClientConnectionError, c)))
	})

	// The primary fails while the racer is in flight, and the racer then
	// wins: both listeners stall at first; then the primary's stops
	// listening, so the retransmitted SYN of its connect is refused (after
	// Linux's initial RTO, a second), and once that failure has dropped
	// the primary the racer's accept queue is emptied, so a retransmitted
	// SYN of its connect is taken.
	t.Run("PrimaryFailsDuringRace", func(t *testing.T) {
		linuxOnly(t)
		primary, racer := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
		ls := testkit.ListenShared(t, testkit.Spot{Addr: primary, Stalled: true}, testkit.Spot{Addr: racer, Stalled: true})
		pl, rl := ls[0], ls[1]
		h, out, done := newRace(t, core.Info{ConnectAttemptDelay: 20 * time.Millisecond, ConnectTimeout: 3 * hang},
			staticResolver{"race.test": {primary, racer}})
		c := connect(t, h, "race.test:"+strconv.Itoa(pl.Port))
		waitUntil(t, "both attempts in flight", func() bool { return len(added(h, c)) == 2 })
		fds := added(h, c)
		// Its fd stays open, as the leak check expects: a listening
		// socket shut down on Linux stops listening.
		require.NoError(t, unix.Shutdown(pl.FD, unix.SHUT_RDWR))
		failed := h.rec.waitEvent(t, "the primary's failure", func(e event) bool {
			return e.conn == c && e.reason == core.ReasonDelPollFD && e.fd == fds[0]
		})
		var connecting bool
		h.do(func() { connecting = c.Connecting() })
		require.True(t, connecting, "the connection ended with its primary")
		queued, _, err := unix.Accept(rl.FD)
		require.NoError(t, err)
		unix.Close(queued)
		adopt := h.rec.waitEvent(t, "RAW_ADOPT of the racer", is(core.ReasonRawAdopt, c))
		h.sync()
		require.Equal(t, netip.AddrPortFrom(racer, uint16(pl.Port)).String(), out.remote)
		require.Equal(t, fds, added(h, c), "one attempt per address")
		require.Equal(t, fds[1], adopt.fd, "the racer is promoted")
		require.Less(t, failed.seq, adopt.seq)
		require.Equal(t, 1, h.rec.count(func(e event) bool { return e.conn == c && !isPollReason(e.reason) }),
			"callbacks for the connection other than its poll changes and RAW_ADOPT")
		done()
		require.Zero(t, h.rec.count(is(core.ReasonClientConnectionError, c)))
	})

	t.Run("StalledPrimary", func(t *testing.T) {
		linuxOnly(t)
		stalled, good := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
		port := testkit.ListenShared(t, testkit.Spot{Addr: stalled, Stalled: true}, testkit.Spot{Addr: good})[0].Port
		h, out, done := newRace(t, core.Info{ConnectAttemptDelay: 20 * time.Millisecond, ConnectTimeout: hang},
			staticResolver{"race.test": {stalled, good}})
		c := connect(t, h, "race.test:"+strconv.Itoa(port))
		h.rec.waitEvent(t, "RAW_ADOPT of the racer", is(core.ReasonRawAdopt, c))
		h.sync()
		require.Equal(t, netip.AddrPortFrom(good, uint16(port)).String(), out.remote)
		require.Equal(t, 1, h.rec.count(func(e event) bool { return e.conn == c && !isPollReason(e.reason) }),
			"callbacks for the connection other than its poll changes and RAW_ADOPT")
		fds := added(h, c)
		require.Len(t, fds, 2, "one attempt per address")
		var fd int
		h.do(func() { fd = c.FD() })
		require.Equal(t, fds[1], fd, "the racer is promoted")
		// The stalled attempt was dropped when the racer won.
		require.Equal(t, 1, h.rec.count(func(e event) bool { return e.conn == c && e.reason == core.ReasonDelPollFD && e.fd == fds[0] }))
		var err error
		h.do(func() { err = c.Close() })
		require.NoError(t, err)
		h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
		done()
		require.Equal(t, 1, h.rec.count(func(e event) bool { return e.conn == c && e.reason == core.ReasonDelPollFD && e.fd == fds[1] }))
		require.Zero(t, h.rec.count(is(core.ReasonClientConnectionError, c)))
	})

	t.Run("AllFail", func(t *testing.T) {
		a, b := raceLoopbacks(t)
		l, err := net.Listen("tcp4", "127.0.0.1:0") // a port nobody uses
		require.NoError(t, err)
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		h, _, done := newRace(t, core.Info{}, staticResolver{"race.test": {a, b}})
		c := connect(t, h, "race.test:"+strconv.Itoa(port))
		e := h.rec.waitEvent(t, "CLIENT_CONNECTION_ERROR", is(core.ReasonClientConnectionError, c))
		require.ErrorIs(t, e.err, unix.ECONNREFUSED)
		var oe *core.OpError
		require.True(t, errors.As(e.err, &oe), "%v is no *core.OpError", e.err)
		require.Equal(t, "connect", oe.Op)
		for _, ip := range []netip.Addr{a, b} {
			require.Contains(t, e.err.Error(), netip.AddrPortFrom(ip, uint16(port)).String(), "each attempt's error is reported")
		}
		done()
		require.Len(t, added(h, c), 2)
		each(t, h, c, core.ReasonClientConnectionError)
	})

	t.Run("NegativeDelayIsSequential", func(t *testing.T) {
		linuxOnly(t)
		stalled, good := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
		port := testkit.ListenShared(t, testkit.Spot{Addr: stalled, Stalled: true}, testkit.Spot{Addr: good})[0].Port
		h, _, done := newRace(t, core.Info{ConnectAttemptDelay: -1, ConnectTimeout: 200 * time.Millisecond},
			staticResolver{"race.test": {stalled, good}})
		c := connect(t, h, "race.test:"+strconv.Itoa(port))
		e := h.rec.waitEvent(t, "CLIENT_CONNECTION_ERROR", is(core.ReasonClientConnectionError, c))
		require.ErrorIs(t, e.err, core.ErrTimeout)
		done()
		require.Len(t, added(h, c), 1, "the next address tried while the first was in progress")
		each(t, h, c, core.ReasonClientConnectionError)
	})

	// Abort (and Destroy) while two attempts are in flight: both are
	// unregistered and closed, and the connection gets its one
	// CLIENT_CONNECTION_ERROR.
	for _, end := range []string{"Abort", "Destroy"} {
		t.Run(end+"DuringRace", func(t *testing.T) {
			linuxOnly(t)
			a, b := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
			port := testkit.ListenShared(t, testkit.Spot{Addr: a, Stalled: true}, testkit.Spot{Addr: b, Stalled: true})[0].Port
			h, _, done := newRace(t, core.Info{ConnectAttemptDelay: time.Millisecond, ConnectTimeout: hang},
				staticResolver{"race.test": {a, b}})
			c := connect(t, h, "race.test:"+strconv.Itoa(port))
			waitUntil(t, "two attempts in flight", func() bool { return len(added(h, c)) == 2 })
			want := core.ErrClosed
			if end == "Abort" {
				var err error
				h.do(func() { err = c.Abort() })
				require.NoError(t, err)
			} else {
				want = core.ErrDestroyed
				h.destroy()
			}
			e := h.rec.waitEvent(t, "CLIENT_CONNECTION_ERROR", is(core.ReasonClientConnectionError, c))
			require.ErrorIs(t, e.err, want)
			done()
			each(t, h, c, core.ReasonClientConnectionError)
		})
	}
}
