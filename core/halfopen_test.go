//go:build unix

package core_test

import (
	"io"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// halfOpenProtocol records the connection-level reasons in order, and
// calls then, if set, for each, for a protocol with AllowHalfOpen.
func halfOpenProtocol(reasons *[]core.Reason, then func(core.Event) error) core.Protocol {
	p := pausedProtocol(reasons, func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRxEnd {
			*reasons = append(*reasons, ev.Reason)
		}
		if then != nil {
			return then(ev)
		}
		return nil
	})
	p.AllowHalfOpen = true
	return p
}

// halfClosed adopts a connection whose peer sends input and shuts its write
// side down, and runs the passes that read both (one read per pass): RAW_RX,
// then RAW_RX_END.
func halfClosed(t *testing.T, s *sim, reasons *[]core.Reason) (*core.Conn, int) {
	t.Helper()
	c, peer := s.adopt()
	_, err := unix.Write(peer, []byte("request"))
	require.NoError(t, err)
	require.NoError(t, unix.Shutdown(peer, unix.SHUT_WR))
	s.passes(2)
	require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd}, *reasons)
	return c, peer
}

// passes runs n passes that do not wait.
func (s *sim) passes(n int) {
	s.t.Helper()
	for range n {
		require.NoError(s.t, s.th.Service(0))
	}
}

// watchSet follows the poll-fd reasons: the fds the backend watches, with
// their interest.
type watchSet map[int]evlib.Events

func (w watchSet) follow(ev core.Event) {
	switch ev.Reason {
	case core.ReasonAddPollFD, core.ReasonChangeModePollFD:
		w[ev.Poll.FD] = ev.Poll.Events
	case core.ReasonDelPollFD:
		delete(w, ev.Poll.FD)
	}
}

// A half-open connection (AllowHalfOpen) outlives CloseTimeout, which
// bounds only what a connection without it answers after the peer's end;
// its idle timeout still closes it. Meanwhile the loop sleeps: the fd at end
// of stream, readable for ever, is watched with interest 0 (the sim's poll
// backend reports a reset so: evlib.CapHangupWithoutInterest), which a
// socket whose peer only shut its write side down never reports, so the
// fake clock gets from 0 to 9 s in one wait (a readable fd watched for
// input would end every wait at once and the clock would not move).
func TestSimHalfOpenOutlivesCloseTimeout(t *testing.T) {
	var reasons []core.Reason
	w := watchSet{}
	s := newSim(t, simloop.NewClock(), core.Info{CloseTimeout: time.Second, IdleTimeout: 10 * time.Second,
		Protocols: []core.Protocol{halfOpenProtocol(&reasons, func(ev core.Event) error { w.follow(ev); return nil })}})
	c, _ := halfClosed(t, s, &reasons)
	ev, watched := w[c.FD()]
	require.True(t, watched, "the half-open connection is watched, for its peer's reset")
	require.Zero(t, ev, "the half-open connection's interest")

	waits := s.th.Stats().Waits
	s.runTo(9 * time.Second)
	require.Equal(t, uint64(1), s.th.Stats().Waits-waits, "waits from 0 to 9 s, nothing to do")
	require.False(t, c.Closed(), "a half-open connection closed at CloseTimeout")

	s.runTo(11 * time.Second)
	require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd, core.ReasonRawClose}, reasons)
	require.Equal(t, map[*core.Conn]closing{c: {10 * time.Second, core.ErrTimeout}}, s.closed)
}

// adoptPair is sim.adopt with the peer's end the test's to close.
func (s *sim) adoptPair() (*core.Conn, int) {
	s.t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(s.t, err)
	if err = unix.SetNonblock(p[1], true); err == nil {
		var c *core.Conn
		if c, err = s.th.Context().AdoptFD(p[0], ""); err == nil {
			return c, p[1]
		}
	}
	unix.Close(p[0])
	unix.Close(p[1])
	require.NoError(s.t, err)
	return nil, -1
}

// A hang-up that tells nothing new does not keep the loop awake: a unix
// socket whose peer closed with nothing unread, after its half-close,
// reports POLLHUP with no error for ever. The core asks the socket,
// ignores the first such report and takes the connection out of the poll
// set at the second; it stays open, the loop sleeps, and the idle timeout
// closes it.
func TestSimHalfOpenPeerGone(t *testing.T) {
	var reasons []core.Reason
	w := watchSet{}
	s := newSim(t, simloop.NewClock(), core.Info{IdleTimeout: 10 * time.Second,
		Protocols: []core.Protocol{halfOpenProtocol(&reasons, func(ev core.Event) error { w.follow(ev); return nil })}})
	c, peer := s.adoptPair()
	_, err := unix.Write(peer, []byte("request"))
	require.NoError(t, err)
	require.NoError(t, unix.Shutdown(peer, unix.SHUT_WR))
	s.passes(2)
	require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd}, reasons)
	fd := c.FD()
	require.Contains(t, w, fd)
	require.NoError(t, unix.Close(peer))

	waits := s.th.Stats().Waits
	s.runTo(9 * time.Second)
	require.LessOrEqual(t, s.th.Stats().Waits-waits, uint64(3), "waits from 0 to 9 s: two hang-ups, then nothing to do")
	require.NotContains(t, w, fd, "the connection is out of the poll set")
	require.False(t, c.Closed())

	s.runTo(11 * time.Second)
	require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd, core.ReasonRawClose}, reasons)
	require.Equal(t, map[*core.Conn]closing{c: {10 * time.Second, core.ErrTimeout}}, s.closed)
}

// The application ends a half-open connection: CloseWrite after RAW_RX_END
// closes it, both sides being done, with a nil Err, and the peer reads the
// answer, then end of stream; CloseWrite before RAW_RX_END (here in RAW_RX)
// has it close after RAW_RX_END with io.EOF, as without AllowHalfOpen.
func TestSimHalfOpenCloseWrite(t *testing.T) {
	for _, early := range []bool{false, true} {
		var reasons []core.Reason
		s := newSim(t, simloop.NewClock(), core.Info{CloseTimeout: time.Second,
			Protocols: []core.Protocol{halfOpenProtocol(&reasons, func(ev core.Event) error {
				switch {
				case ev.Reason == core.ReasonRawRX && early:
					return ev.Conn.CallbackOnWritable()
				case ev.Reason == core.ReasonRawWriteable:
					if _, err := ev.Conn.Write([]byte("answer")); err != nil {
						return err
					}
					return ev.Conn.CloseWrite()
				}
				return nil
			})}})
		c, peer := s.adopt()
		_, err := unix.Write(peer, []byte("request"))
		require.NoError(t, err)
		require.NoError(t, unix.Shutdown(peer, unix.SHUT_WR))
		s.passes(2)
		if early {
			require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawWriteable, core.ReasonRawRxEnd, core.ReasonRawClose}, reasons)
			require.Equal(t, map[*core.Conn]closing{c: {0, io.EOF}}, s.closed)
		} else {
			require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd}, reasons)
			s.runTo(5 * time.Second)
			require.NoError(t, c.CallbackOnWritable())
			s.runTo(6 * time.Second)
			require.Equal(t, []core.Reason{core.ReasonRawRX, core.ReasonRawRxEnd, core.ReasonRawWriteable, core.ReasonRawClose}, reasons)
			require.Equal(t, map[*core.Conn]closing{c: {5 * time.Second, nil}}, s.closed)
		}
		var buf [16]byte
		n, err := unix.Read(peer, buf[:])
		require.NoError(t, err)
		require.Equal(t, "answer", string(buf[:n]))
		n, err = unix.Read(peer, buf[:])
		require.NoError(t, err)
		require.Zero(t, n, "end of stream after the answer")
	}
}
