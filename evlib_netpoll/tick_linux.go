//go:build linux && (amd64 || arm64 || loong64)

package evlib_netpoll

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"
	"golang.org/x/sys/unix"
)

// The tick: a timerfd, given to netpoll as a connection, that expires every
// tickPeriod while the backend is busy, so that netpoll's poller never
// sleeps in epoll_wait longer than that while readers it woke wait for the
// one P (see "One P" in the package documentation). While passes keep
// coming, each expiry also looks ahead (Backend.tickLook). It stops after
// tickIdle expiries without a pass, so an idle server is not woken.
const (
	tickPeriod = time.Millisecond
	tickIdle   = 8
)

// Tick states.
const (
	tickOff   = iota // disarmed, or not made yet
	tickBusy         // armed, and a pass ran since the last expiry
	tickQuiet        // armed, and no pass since the last expiry
)

type ticker struct {
	state   atomic.Int32 // read by passes without mu
	mu      sync.Mutex   // orders arming, expiries and close
	idle    int          // expiries in a row without a pass
	busyRun int          // expiries in a row that followed a pass
	fd      int          // the timerfd, netpoll's to close; -1 until made
	nc      netpoll.Connection
	look    func()        // run on the tick's goroutine while passes keep coming
	done    chan struct{} // closed when the tick's goroutine ended
	dead    bool          // closed, or could not be made (no fd free)
}

// passed notes a pass: it arms the tick if it is off, and marks it busy.
// A pass costs an atomic load, and once per tickPeriod a lock.
func (t *ticker) passed() {
	if t.state.Load() != tickBusy {
		t.busy()
	}
}

func (t *ticker) busy() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dead {
		return
	}
	if t.state.Load() == tickOff {
		if t.nc == nil && !t.start() {
			t.dead = true
			return
		}
		t.arm(tickPeriod)
	}
	t.state.Store(tickBusy)
}

// start makes the timerfd and its connection, and the goroutine that reads
// its expiries. Without a free fd the backend goes on without a tick.
func (t *ticker) start() bool {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return false
	}
	nc, err := netpoll.NewFDConnection(fd)
	if err != nil {
		return false // netpoll closed fd
	}
	t.fd, t.nc, t.done = fd, nc, make(chan struct{})
	go t.run(nc.Reader())
	return true
}

func (t *ticker) arm(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	unix.TimerfdSettime(t.fd, 0, &unix.ItimerSpec{Interval: ts, Value: ts}, nil)
}

// run takes the expiries netpoll read, looks ahead at those that follow
// two periods with passes, and disarms the tick after tickIdle of them
// without a pass.
func (t *ticker) run(r netpoll.Reader) {
	defer close(t.done)
	for {
		if _, err := r.Peek(1); err != nil {
			return // closed
		}
		r.Skip(r.Len())
		r.Release()
		t.mu.Lock()
		look := false
		switch {
		case t.dead:
		case t.state.Load() == tickBusy:
			t.state.Store(tickQuiet)
			t.idle = 0
			// A burst of passes shorter than a period starves nothing:
			// look once passes came in two periods in a row.
			t.busyRun++
			look = t.busyRun >= 2
		case t.state.Load() == tickQuiet:
			t.busyRun = 0
			if t.idle++; t.idle >= tickIdle {
				t.arm(0)
				t.state.Store(tickOff)
			}
		}
		t.mu.Unlock()
		if look {
			t.look()
		}
	}
}

// close ends the tick and waits for its goroutine.
func (t *ticker) close() {
	t.mu.Lock()
	t.dead = true
	nc := t.nc
	t.mu.Unlock()
	if nc != nil {
		nc.Close()
		<-t.done
	}
}
