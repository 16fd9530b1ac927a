//go:build unix

package conformance

import (
	"io"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Abort closes a connection at once with output held, where Close would
// send it first: the peer reads a reset, not an end of stream (a cut-off
// stream must not pass for a whole one), and RAW_CLOSE says ErrAborted. It
// works from the connection's own RAW_WRITEABLE, from outside its
// callbacks (a Post), and on a connection draining after Close; a second
// Abort, or one after the close, says ErrClosed.
func (s *suite) testAbort(t *testing.T) {
	for _, where := range []string{"InWriteable", "Posted", "WhileDraining"} {
		t.Run(where, func(t *testing.T) {
			answer := pattern(43, 4<<20)
			var held int
			var second error
			cb := func(ev core.Event) error {
				if ev.Reason != core.ReasonRawWriteable {
					return nil
				}
				c := ev.Conn
				if _, err := c.Write(answer); err != nil {
					return err
				}
				held = c.Buffered()
				switch where {
				case "InWriteable":
					if err := c.Abort(); err != nil {
						return err
					}
					second = c.Abort()
				case "WhileDraining":
					return c.Close()
				}
				return nil
			}
			h := s.newHarness(t, core.Info{CloseTimeout: time.Minute, Protocols: []core.Protocol{
				{Name: "abort", Callback: cb}}})
			conn, cli := h.adoptNarrowPair(t)
			require.NoError(t, conn.CallbackOnWritable())
			h.start()
			h.rec.waitEvent(t, "RAW_WRITEABLE", is(core.ReasonRawWriteable, conn))
			if where != "InWriteable" {
				h.do(func() {
					if where == "WhileDraining" && !conn.Draining() {
						second = io.ErrUnexpectedEOF // (reported below)
						return
					}
					if second = conn.Abort(); second == nil {
						second = conn.Abort()
					}
				})
			}
			e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, conn))
			require.ErrorIs(t, e.err, core.ErrAborted, "RAW_CLOSE of an aborted connection")
			require.ErrorIs(t, second, core.ErrClosed, "a second Abort")
			var n int
			h.do(func() { n = held })
			require.Positive(t, n, "Abort came with output held (narrow buffers)")

			require.NoError(t, cli.SetReadDeadline(time.Now().Add(hang)))
			got, err := io.ReadAll(cli)
			require.ErrorIs(t, err, unix.ECONNRESET, "the peer of an aborted connection reads a reset (after %d of %d bytes)", len(got), len(answer))
			require.Less(t, len(got), len(answer), "the output held was dropped")
			h.do(func() { err = conn.Abort() })
			require.ErrorIs(t, err, core.ErrClosed, "Abort after RAW_CLOSE")
			require.Equal(t, 1, h.rec.count(is(core.ReasonRawClose, conn)), "RAW_CLOSE")
			h.rec.verify(t)
		})
	}
}
