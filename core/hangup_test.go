//go:build unix

package core_test

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/internal/simloop"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A paused connection whose peer hung up keeps the input it read for
// RAW_RX, may still answer after an orderly end, and closes once nothing is
// left. These tests run on the sim backend (see simclock_test.go); the
// conformance suite's Model test found the bugs they pin down.

// hungUp adopts a connection, pauses its rx and has its peer send input
// and hang up (shut down both ways: a hangup for poll(2)). The next pass
// reads the input, which the connection keeps, and the hangup.
func hungUp(t *testing.T, s *sim, input string) *core.Conn {
	t.Helper()
	c, peer := s.adopt()
	require.NoError(t, c.RxFlowControl(false))
	_, err := unix.Write(peer, []byte(input))
	require.NoError(t, err)
	require.NoError(t, unix.Shutdown(peer, unix.SHUT_RDWR))
	return c
}

// pausedProtocol is a protocol whose callback records the connection-level
// reasons in order and calls then, if set, for each.
func pausedProtocol(reasons *[]core.Reason, then func(core.Event) error) core.Protocol {
	return core.Protocol{Name: "p", Callback: func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawRX, core.ReasonRawWriteable, core.ReasonRawClose, core.ReasonTimer:
			*reasons = append(*reasons, ev.Reason)
		}
		if then != nil {
			return then(ev)
		}
		return nil
	}}
}

// After the peer's orderly end the connection may still answer: a
// RAW_WRITEABLE asked for before the hangup comes, in the pass that read
// it, and CallbackOnWritable asks for more, while the input waits for the
// application to resume; the connection closes with io.EOF once nothing is
// left. (The Model test once took the WRITEABLE that came after the hangup
// for a bug; the core's documentation promises it.)
func TestSimWriteableAfterHangup(t *testing.T) {
	var reasons []core.Reason
	s := newSim(t, simloop.NewClock(), core.Info{CloseTimeout: time.Minute,
		Protocols: []core.Protocol{pausedProtocol(&reasons, nil)}})
	c := hungUp(t, s, "kept")
	require.NoError(t, c.CallbackOnWritable(), "granted at once: the connection is not known to be blocked")

	s.runTo(time.Second) // the pass that reads the input and the hangup
	require.Equal(t, []core.Reason{core.ReasonRawWriteable}, reasons)
	require.NoError(t, c.CallbackOnWritable(), "the peer's orderly end leaves the connection writable")
	s.runTo(2 * time.Second)
	require.Equal(t, []core.Reason{core.ReasonRawWriteable, core.ReasonRawWriteable}, reasons)
	require.False(t, c.Closed(), "the kept input waits for resume")

	require.NoError(t, c.RxFlowControl(true))
	s.runTo(3 * time.Second)
	require.Equal(t, []core.Reason{core.ReasonRawWriteable, core.ReasonRawWriteable, core.ReasonRawRX, core.ReasonRawClose}, reasons)
	require.Equal(t, map[*core.Conn]closing{c: {2 * time.Second, io.EOF}}, s.closed)
}

// Close of such a connection keeps Close's promise, a RAW_CLOSE with a nil
// Err, wherever it is called. Inside the RAW_RX that delivers the last of
// the kept input it used to close with the hangup's io.EOF instead; and
// with GracefulClose, Close waited for the peer's end of stream, which had
// come already: the core watched the hung-up fd again but ignored it,
// ready in every pass, until CloseTimeout closed it with ErrTimeout.
func TestSimCloseAfterHangup(t *testing.T) {
	for _, graceful := range []bool{false, true} {
		for _, where := range []string{"in the last RAW_RX", "before resuming"} {
			t.Run(fmt.Sprintf("graceful=%v/%s", graceful, where), func(t *testing.T) {
				var reasons []core.Reason
				var rx []byte
				s := newSim(t, simloop.NewClock(), core.Info{GracefulClose: graceful, CloseTimeout: time.Minute,
					Protocols: []core.Protocol{pausedProtocol(&reasons, func(ev core.Event) error {
						if ev.Reason == core.ReasonRawRX {
							if rx = append(rx, ev.Data...); len(rx) == 4 {
								return ev.Conn.Close()
							}
						}
						return nil
					})}})
				s.th.Context().Protocol("p").RxChunk = 2
				c := hungUp(t, s, "kept")
				s.runTo(time.Second)
				require.False(t, c.Closed())
				if where == "before resuming" {
					require.NoError(t, c.Close())
				} else {
					require.NoError(t, c.RxFlowControl(true))
				}
				s.runTo(time.Hour)
				require.Equal(t, map[*core.Conn]closing{c: {time.Second, nil}}, s.closed)
			})
		}
	}
}

// The hangup bounds how long the kept input waits, by CloseTimeout, but a
// timeout the application set that falls due earlier stays, and closes the
// connection with ErrTimeout as SetTimeout promised. The hangup's bound
// used to replace it: the connection lived on until CloseTimeout, and
// closed with the hangup's io.EOF. A later timeout gives way to the bound.
func TestSimHangupKeepsEarlierTimeout(t *testing.T) {
	for _, tc := range []struct {
		timeout time.Duration
		want    closing
	}{
		{300 * time.Millisecond, closing{300 * time.Millisecond, core.ErrTimeout}},
		{time.Hour, closing{time.Minute, io.EOF}},
	} {
		t.Run(fmt.Sprint(tc.timeout), func(t *testing.T) {
			var reasons []core.Reason
			s := newSim(t, simloop.NewClock(), core.Info{CloseTimeout: time.Minute,
				Protocols: []core.Protocol{pausedProtocol(&reasons, nil)}})
			c := hungUp(t, s, "kept")
			require.NoError(t, c.SetTimeout(tc.timeout))
			s.runTo(2 * time.Hour) // the first pass, at 0, reads the input and the hangup
			require.Equal(t, map[*core.Conn]closing{c: tc.want}, s.closed)
			require.Equal(t, []core.Reason{core.ReasonRawClose}, reasons, "the kept input was never resumed")
		})
	}
}

// The application's timeout cannot lift or stretch the core's CloseTimeout
// bound, after the peer's end or while Close drains: SetTimeout(0) or a
// later SetTimeout, made for the application's own reasons after the bound
// was set, used to replace it, and the connection stayed open for good.
func TestSimSetTimeoutKeepsCloseBound(t *testing.T) {
	for _, d := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprintf("hangup/SetTimeout(%v)", d), func(t *testing.T) {
			var reasons []core.Reason
			s := newSim(t, simloop.NewClock(), core.Info{CloseTimeout: time.Minute,
				Protocols: []core.Protocol{pausedProtocol(&reasons, nil)}})
			c := hungUp(t, s, "kept")
			s.runTo(time.Second) // reads the input and the hangup at 0
			require.NoError(t, c.SetTimeout(d))
			s.runTo(3 * time.Hour)
			require.Equal(t, map[*core.Conn]closing{c: {time.Minute, io.EOF}}, s.closed)
		})
		t.Run(fmt.Sprintf("draining/SetTimeout(%v)", d), func(t *testing.T) {
			s := newSim(t, simloop.NewClock(), core.Info{CloseTimeout: time.Minute, Protocols: writer(make([]byte, 8<<20))})
			c, _ := s.adopt() // the peer never reads
			require.NoError(t, c.CallbackOnWritable())
			s.runTo(time.Second)
			require.Positive(t, c.Buffered(), "the kernel took all of 8 MiB")
			require.NoError(t, c.Close())
			require.True(t, c.Draining())
			s.runTo(2 * time.Second)
			require.NoError(t, c.SetTimeout(d))
			s.runTo(3 * time.Hour)
			require.Equal(t, map[*core.Conn]closing{c: {time.Second + time.Minute, core.ErrTimeout}}, s.closed)
		})
	}
}
