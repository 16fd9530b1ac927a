//go:build unix

package core_test

import (
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// acceptRecorder is the poll backend as an evlib.AcceptedAdder that
// records which streams came through AddAccepted and which through Add.
type acceptRecorder struct{ evlib.Backend }

var acceptLog struct {
	sync.Mutex
	accepted, added []int
}

func (r acceptRecorder) AddAccepted(fd int, ev evlib.Events) error {
	acceptLog.Lock()
	acceptLog.accepted = append(acceptLog.accepted, fd)
	acceptLog.Unlock()
	return r.Backend.Add(fd, evlib.KindStream, ev)
}

func (r acceptRecorder) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	if kind == evlib.KindStream {
		acceptLog.Lock()
		acceptLog.added = append(acceptLog.added, fd)
		acceptLog.Unlock()
	}
	return r.Backend.Add(fd, kind, ev)
}

// registerAcceptRecorder registers "accept-recorder": poll, recording,
// and declaring no evlib.CapHangupWithoutInterest, so that a half-open
// connection is parked (out of the backend) after RAW_RX_END.
func registerAcceptRecorder(t *testing.T) {
	t.Helper()
	acceptLog.Lock()
	acceptLog.accepted, acceptLog.added = nil, nil
	acceptLog.Unlock()
	registerWrappedPollWithout(t, "accept-recorder", evlib.CapHangupWithoutInterest,
		func(b evlib.Backend) evlib.Backend { return acceptRecorder{b} })
}

// A stream one of the core's listeners accepted is added through
// evlib.AcceptedAdder once, when it is first watched, before anything
// read it. Its later adds (here after it was parked half open and then
// blocked writing) and an adopted stream's go through Add: by then the
// core has read it, or someone may have before it was adopted.
func TestAcceptedStreamAddedOnceAsAccepted(t *testing.T) {
	registerAcceptRecorder(t)
	big := make([]byte, 16<<20)
	var (
		accepted *core.Conn
		wrote    bool
	)
	ctx, err := core.New(core.Info{EventLib: "accept-recorder", Protocols: []core.Protocol{{
		Name: "p", AllowHalfOpen: true,
		Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				if accepted == nil {
					accepted = ev.Conn
				}
			case core.ReasonRawRxEnd:
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				if !wrote {
					// More than the socket takes: the core keeps the rest
					// and watches the parked stream for writability again.
					wrote = true
					_, err := ev.Conn.Write(big)
					return err
				}
			}
			return nil
		},
	}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	th := ctx.Thread(0)
	ln, err := ctx.Listen("tcp4", "127.0.0.1:0", "p")
	require.NoError(t, err)

	cli, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer cli.Close()
	_, err = cli.Write([]byte("request"))
	require.NoError(t, err)
	require.NoError(t, cli.(*net.TCPConn).CloseWrite())

	// The client reads nothing, so the write stays blocked.
	deadline := time.Now().Add(10 * time.Second) // a hang guard, not a timing assertion
	for !wrote || th.Stats().Writes == 0 {
		require.True(t, time.Now().Before(deadline), "the accepted connection never wrote")
		require.NoError(t, th.Service(10*time.Millisecond))
	}
	require.NotNil(t, accepted)
	fd := accepted.FD()

	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	defer unix.Close(p[1])
	require.NoError(t, unix.SetNonblock(p[0], true))
	adopted, err := ctx.AdoptFD(p[0], "p")
	if err != nil {
		unix.Close(p[0])
	}
	require.NoError(t, err)

	acceptLog.Lock()
	defer acceptLog.Unlock()
	require.Equal(t, []int{fd}, acceptLog.accepted, "streams added through AddAccepted")
	require.Equal(t, 1, countOf(acceptLog.added, fd), "adds of the accepted stream through Add (once parked, it was watched again): %v", acceptLog.added)
	require.True(t, slices.Contains(acceptLog.added, adopted.FD()), "the adopted stream was added through Add: %v", acceptLog.added)
}

func countOf(s []int, v int) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
