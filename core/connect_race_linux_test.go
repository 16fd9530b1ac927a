package core_test

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Checklist 35, in fake time: Connect races a host name's addresses. The
// stalled addresses are listeners whose accept queue is full, which Linux
// answers by dropping the SYN, so a connect to them stays in progress;
// every 127.0.0.x is loopback on Linux, so several listeners share a port
// on different addresses, and a resolver names them all.

// at is a listener loopListeners makes: on 127.0.0.<last>, stalled or
// not (see testkit.Spot).
type at struct {
	last    byte
	stalled bool
}

// loopListeners listens on every address of ls at one port and returns
// the port.
func loopListeners(t *testing.T, ls ...at) int {
	t.Helper()
	spots := make([]testkit.Spot, len(ls))
	for i, l := range ls {
		spots[i] = testkit.Spot{Addr: lo(l.last), Stalled: l.stalled}
	}
	return testkit.ListenShared(t, spots...)[0].Port
}

func lo(last byte) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, last}) }

// fdAt is a poll-fd change or an outcome, at a time on the fake clock.
type fdAt struct {
	fd  int
	at  time.Duration
	err error
}

// raceLog records what a racing connection's callbacks saw.
type raceLog struct {
	adds, dels, adopted, failed []fdAt
	remote                      net.Addr
}

func (l *raceLog) dels4(fd int) int {
	n := 0
	for _, d := range l.dels {
		if d.fd == fd {
			n++
		}
	}
	return n
}

// raceSim is a sim context whose protocol records into a raceLog.
func raceSim(t *testing.T, info core.Info, names staticResolver) (*sim, *raceLog) {
	clk := simloop.NewClock()
	log := &raceLog{}
	info.Resolver = names
	info.Protocols = []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonAddPollFD:
			if ev.Conn == nil {
				break // the thread's own wake fd
			}
			log.adds = append(log.adds, fdAt{fd: ev.Poll.FD, at: clk.Now()})
		case core.ReasonDelPollFD:
			if ev.Conn == nil {
				break
			}
			log.dels = append(log.dels, fdAt{fd: ev.Poll.FD, at: clk.Now()})
		case core.ReasonRawAdopt:
			log.adopted = append(log.adopted, fdAt{fd: ev.Conn.FD(), at: clk.Now()})
			log.remote = ev.Conn.RemoteAddr()
		case core.ReasonClientConnectionError:
			log.failed = append(log.failed, fdAt{fd: -1, at: clk.Now(), err: ev.Err})
		}
		return nil
	}}}
	return newSim(t, clk, info), log
}

// until services the thread without moving its clock (a wait of 0) until
// cond holds: for what comes from outside the loop, the resolver's answer
// or a loopback handshake, which take real time.
func (s *sim) until(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		require.True(s.t, time.Now().Before(deadline), "no %s", what)
		at := s.clk.Now()
		require.NoError(s.t, s.th.Service(0))
		require.Equal(s.t, at, s.clk.Now(), "the clock moved waiting for %s", what)
		time.Sleep(time.Millisecond)
	}
}

// The next address starts exactly when the attempt delay (250 ms by
// default) passes with no winner; the racer that connects wins and the
// stalled attempt is unregistered and closed then, unseen by the
// application.
func TestSimConnectRacerStartsAtAttemptDelay(t *testing.T) {
	port := loopListeners(t, at{1, true}, at{2, false})
	s, log := raceSim(t, core.Info{ConnectTimeout: 5 * time.Second},
		staticResolver{"race.test": {lo(1), lo(2)}})
	c, err := s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("first attempt", func() bool { return len(log.adds) == 1 })
	require.Equal(t, time.Duration(0), log.adds[0].at)
	s.runTo(250*time.Millisecond - 1)
	require.Len(t, log.adds, 1, "a racer before the attempt delay")
	require.True(t, c.Connecting())
	s.runTo(250 * time.Millisecond)
	require.Len(t, log.adds, 2, "no racer at the attempt delay")
	require.Equal(t, 250*time.Millisecond, log.adds[1].at)
	s.until("RAW_ADOPT", func() bool { return len(log.adopted) > 0 })
	require.Equal(t, []fdAt{{fd: log.adds[1].fd, at: 250 * time.Millisecond}}, log.adopted)
	require.Equal(t, "127.0.0.2:"+strconv.Itoa(port), log.remote.String())
	require.Equal(t, []fdAt{{fd: log.adds[0].fd, at: 250 * time.Millisecond}}, log.dels, "the stalled attempt unregistered once")
	require.Empty(t, log.failed)
	require.Equal(t, log.adds[1].fd, c.FD(), "the winner is promoted")
	var st unix.Stat_t
	require.ErrorIs(t, unix.Fstat(log.adds[0].fd, &st), unix.EBADF, "the loser is closed")
	require.NoError(t, c.Close())
	s.runTo(time.Second)
	require.Equal(t, 1, log.dels4(log.adds[1].fd))
}

// With two addresses stalled, the racers start one attempt delay apart;
// the third address's connect wins and both stalled attempts close then.
func TestSimConnectWinnerClosesTheOthers(t *testing.T) {
	port := loopListeners(t, at{1, true}, at{3, true}, at{2, false})
	s, log := raceSim(t, core.Info{ConnectAttemptDelay: 100 * time.Millisecond},
		staticResolver{"race.test": {lo(1), lo(3), lo(2)}})
	_, err := s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("first attempt", func() bool { return len(log.adds) == 1 })
	s.runTo(200 * time.Millisecond)
	require.Len(t, log.adds, 3)
	require.Equal(t, []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond},
		[]time.Duration{log.adds[0].at, log.adds[1].at, log.adds[2].at})
	s.until("RAW_ADOPT", func() bool { return len(log.adopted) > 0 })
	require.Equal(t, []fdAt{{fd: log.adds[2].fd, at: 200 * time.Millisecond}}, log.adopted)
	require.ElementsMatch(t, []fdAt{{fd: log.adds[0].fd, at: 200 * time.Millisecond}, {fd: log.adds[1].fd, at: 200 * time.Millisecond}}, log.dels)
	require.Equal(t, "127.0.0.2:"+strconv.Itoa(port), log.remote.String())
	require.Empty(t, log.failed)
}

// A failed attempt starts the next address at once, without waiting for
// the attempt delay.
func TestSimConnectFailedAttemptStartsNextAtOnce(t *testing.T) {
	port := loopListeners(t, at{2, false}) // nothing listens on 127.0.0.3
	s, log := raceSim(t, core.Info{ConnectAttemptDelay: time.Hour},
		staticResolver{"race.test": {lo(3), lo(2)}})
	_, err := s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("RAW_ADOPT", func() bool { return len(log.adopted) > 0 })
	require.Equal(t, time.Duration(0), log.adopted[0].at)
	require.Equal(t, "127.0.0.2:"+strconv.Itoa(port), log.remote.String())
	require.Empty(t, log.failed)
}

// At most MaxConnectRacers attempts are in flight: with every address
// stalled, the attempt delay starts no more once that many are, and
// ConnectTimeout bounds the whole race, closing each of them once.
func TestSimConnectRacersCappedAndTimedOut(t *testing.T) {
	var ls []at
	var names []netip.Addr
	for i := range core.MaxConnectRacers + 2 {
		ls = append(ls, at{byte(1 + i), true})
		names = append(names, lo(byte(1+i)))
	}
	port := loopListeners(t, ls...)
	s, log := raceSim(t, core.Info{ConnectAttemptDelay: 10 * time.Millisecond, ConnectTimeout: time.Second},
		staticResolver{"race.test": names})
	c, err := s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("first attempt", func() bool { return len(log.adds) == 1 })
	s.runTo(time.Second - 1)
	require.Len(t, log.adds, core.MaxConnectRacers)
	require.Empty(t, log.dels)
	require.True(t, c.Connecting())
	s.runTo(time.Second)
	require.Len(t, log.failed, 1)
	require.Equal(t, time.Second, log.failed[0].at)
	require.ErrorIs(t, log.failed[0].err, core.ErrTimeout)
	require.Len(t, log.dels, core.MaxConnectRacers)
	for _, a := range log.adds {
		require.Equal(t, 1, log.dels4(a.fd), "fd %d", a.fd)
	}
	require.Empty(t, log.adopted)
}

// A negative attempt delay races nothing: a stalled first address holds
// the connection until ConnectTimeout, and the next is never tried.
func TestSimConnectNegativeDelayIsSequential(t *testing.T) {
	port := loopListeners(t, at{1, true}, at{2, false})
	s, log := raceSim(t, core.Info{ConnectAttemptDelay: -1, ConnectTimeout: time.Second},
		staticResolver{"race.test": {lo(1), lo(2)}})
	_, err := s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("first attempt", func() bool { return len(log.adds) == 1 })
	s.runTo(time.Hour)
	require.Len(t, log.adds, 1)
	require.Len(t, log.failed, 1)
	require.Equal(t, time.Second, log.failed[0].at)
	require.ErrorIs(t, log.failed[0].err, core.ErrTimeout)
	require.Empty(t, log.adopted)
}

// A racer needs room for its fd under the thread's fd limit: with none,
// the attempt delay starts nothing and the connection goes on with the
// attempt it has, not failing for want of room; a failed attempt's room
// then goes to the next address.
func TestSimConnectRacerWaitsForRoom(t *testing.T) {
	port := loopListeners(t, at{1, true}, at{2, false})
	s, log := raceSim(t, core.Info{FDLimit: 1, ConnectAttemptDelay: 10 * time.Millisecond, ConnectTimeout: time.Second},
		staticResolver{"race.test": {lo(1), lo(2)}, "refused.test": {lo(3), lo(2)}})
	_, err := s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("first attempt", func() bool { return len(log.adds) == 1 })
	s.runTo(time.Second - 1)
	require.Len(t, log.adds, 1, "a racer beyond the fd limit")
	require.Empty(t, log.failed)
	s.runTo(time.Second)
	require.Len(t, log.failed, 1)
	require.ErrorIs(t, log.failed[0].err, core.ErrTimeout)

	// Nothing listens on 127.0.0.3: that attempt fails, and its room
	// takes the racer.
	_, err = s.th.Context().Connect("tcp", "refused.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("RAW_ADOPT", func() bool { return len(log.adopted) > 0 })
	require.Equal(t, "127.0.0.2:"+strconv.Itoa(port), log.remote.String())
	require.Len(t, log.failed, 1)

	// With room for two, the same race as the first starts its racer at
	// the attempt delay, which wins.
	s, log = raceSim(t, core.Info{FDLimit: 2, ConnectAttemptDelay: 10 * time.Millisecond, ConnectTimeout: time.Second},
		staticResolver{"race.test": {lo(1), lo(2)}})
	_, err = s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("first attempt", func() bool { return len(log.adds) == 1 })
	s.runTo(10 * time.Millisecond)
	require.Len(t, log.adds, 2)
	s.until("RAW_ADOPT", func() bool { return len(log.adopted) > 0 })
	require.Equal(t, 10*time.Millisecond, log.adopted[0].at)
	require.Equal(t, "127.0.0.2:"+strconv.Itoa(port), log.remote.String())
	require.Empty(t, log.failed)

	// Room made by another connection's close while the first attempt
	// stalls: the racer starts at the next attempt delay, and wins.
	s, log = raceSim(t, core.Info{FDLimit: 2, ConnectAttemptDelay: 10 * time.Millisecond, ConnectTimeout: time.Second},
		staticResolver{"race.test": {lo(1), lo(2)}})
	other, peer := s.adoptPair()
	defer unix.Close(peer)
	base, adopted := len(log.adds), len(log.adopted)
	_, err = s.th.Context().Connect("tcp", "race.test:"+strconv.Itoa(port), "")
	require.NoError(t, err)
	s.until("first attempt", func() bool { return len(log.adds) == base+1 })
	s.runTo(15 * time.Millisecond)
	require.Len(t, log.adds, base+1, "a racer beyond the fd limit")
	require.NoError(t, other.Close())
	s.runTo(20 * time.Millisecond)
	require.Len(t, log.adds, base+2, "no racer at the attempt delay after the one that found no room")
	s.until("RAW_ADOPT", func() bool { return len(log.adopted) > adopted })
	require.Equal(t, 20*time.Millisecond, log.adopted[adopted].at, "the racer at the attempt delay after the one that found no room")
	require.Equal(t, "127.0.0.2:"+strconv.Itoa(port), log.remote.String())
	require.Empty(t, log.failed)
}
