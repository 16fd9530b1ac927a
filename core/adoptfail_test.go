//go:build unix

package core_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// refusingStreams is a backend that refuses every stream fd, as select(2)
// refuses one beyond FD_SETSIZE.
type refusingStreams struct{ evlib.Backend }

func (b refusingStreams) Add(fd int, kind evlib.Kind, ev evlib.Events) error {
	if kind == evlib.KindStream {
		return fmt.Errorf("%w: fd %d: this backend takes no streams", evlib.ErrBadFD, fd)
	}
	return b.Backend.Add(fd, kind, ev)
}

// logBuffer is a log the loop writes while the test reads it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// A connection the backend refuses after accept is closed, and the log
// says why: at the 1st, 2nd and 4th such failure, not at every one, so that
// a cause that fails every accept does not flood the log.
func TestAcceptedButRefusedIsLogged(t *testing.T) {
	const name = "poll-refusing-streams"
	registerWrappedPoll(t, name, func(b evlib.Backend) evlib.Backend { return refusingStreams{b} })
	var log logBuffer
	ctx, err := core.New(core.Info{EventLib: name, Logger: slog.New(slog.NewTextHandler(&log, nil)),
		Protocols: []core.Protocol{{Name: "p", Callback: func(core.Event) error { return nil }}}})
	require.NoError(t, err)
	defer ctx.Destroy()
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "p")
	require.NoError(t, err)
	go ctx.Run(t.Context())

	logged := func() int { return strings.Count(log.String(), "could not be adopted") }
	for i, want := range []int{1, 2, 2, 3, 3} {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, err = c.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "connection %d: closed by the server", i+1)
		c.Close()
		// The log line comes before the close the client saw.
		require.Equal(t, want, logged(), "log lines after %d refused connections:\n%s", i+1, log.String())
	}
	require.NoError(t, ctx.Destroy())
	require.Contains(t, log.String(), "this backend takes no streams", "the log says why")
	require.Contains(t, log.String(), "failures=4")
}
