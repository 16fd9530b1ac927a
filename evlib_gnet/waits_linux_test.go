//go:build linux

package evlib_gnet_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/evlib_gnet"
	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// drainPasser reads what each Ready reports, so nothing stays readable, and
// hands each Pass's number and the Waits count at its start to passes.
// Pass number stop stops the loop.
type drainPasser struct {
	ctr    *evlib.Counters
	passes chan [2]uint64
	n      uint64
	stop   uint64
}

func (p *drainPasser) Ready(fd int, _ evlib.Events) {
	buf := make([]byte, 64)
	for {
		if n, _ := unix.Read(fd, buf); n <= 0 {
			return
		}
	}
}

func (p *drainPasser) Pass() (time.Duration, bool) {
	p.n++
	p.passes <- [2]uint64{p.n, p.ctr.Waits.Load()}
	return -1, p.n == p.stop
}

// In Loop, every Pass that hands control back to Polling with nothing due
// at once counts the wait that follows, before it: a function posted to
// the core runs in a pass, and whoever waits for the loop to be idle again
// looks for a wait counted after it. The pass after a batch whose fds gnet
// had not reported since the last wait it counted used to count none
// (nothing told that batch from the rest of the one before), and the
// loop blocked uncounted.
func TestLoopCountsTheWaitAfterEveryPass(t *testing.T) {
	ctr := &evlib.Counters{}
	p := &drainPasser{ctr: ctr, passes: make(chan [2]uint64, 8), stop: 4}
	be, err := evlib_gnet.New(evlib.Config{Sink: p, Counters: ctr, MaxFDs: 1 << 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	defer be.Close()
	_, peers := addPairs(t, be, 2)
	peer := peers[0]
	done := make(chan error, 1)
	go func() { done <- be.(evlib.Looper).Loop(p) }()
	defer func() {
		unix.Write(peer, []byte("x")) // the pass that stops the loop
		require.NoError(t, <-done)
	}()

	require.Equal(t, uint64(1), (<-p.passes)[0], "Loop's first pass")
	waitWaits := func(after uint64, what string) {
		t.Helper()
		testkit.WaitFor(t, 10*time.Second, "a wait counted after "+what, func() bool { return ctr.Waits.Load() > after })
	}
	waitWaits(0, "Loop's first pass")
	// The first fd's batch: held for its pass, and reported again in the
	// wait that brings that pass, which told the batches apart.
	send(t, peers, 0)
	second := <-p.passes
	require.Equal(t, uint64(2), second[0])
	waitWaits(second[1], "the pass after the first fd's batch")
	// After a batch of one the next fd events are handed over at once:
	// the second fd, new since the last wait counted, is such a batch.
	send(t, peers, 1)
	third := <-p.passes
	require.Equal(t, uint64(3), third[0])
	waitWaits(third[1], "the pass after the second fd's batch")
}
