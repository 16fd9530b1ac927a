//go:build unix

package evlib_poll_test

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/plugloop/plugloop/conformance"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_poll"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, evlib_poll.Name)
}

type recorder struct{ fds []int }

func (r *recorder) Ready(fd int, _ evlib.Events) { r.fds = append(r.fds, fd) }

// A batch is reported in fd order, also after a Remove reordered the
// pollfd array.
func TestBatchInFDOrder(t *testing.T) {
	rec := &recorder{}
	be, err := evlib_poll.New(evlib.Config{Sink: rec, Counters: &evlib.Counters{}, MaxFDs: 1 << 16,
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer be.Close()
	var fds, peers [4]int
	for i := range fds {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		require.NoError(t, err)
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		fds[i], peers[i] = p[0], p[1]
		require.NoError(t, be.Add(fds[i], evlib.KindStream, evlib.Readable))
		_, err = unix.Write(peers[i], []byte("x"))
		require.NoError(t, err)
	}
	require.True(t, slices.IsSorted(fds[:]))
	require.NoError(t, be.Remove(fds[1])) // the last entry takes its place
	n, err := be.Poll(time.Second)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, []int{fds[0], fds[2], fds[3]}, rec.fds)
}
