//go:build linux

package main

// The io_uring load generator: one goroutine, locked to its OS thread,
// drives every connection through one ring. Each connection keeps one
// request in flight as a SEND of the payload linked to a RECV of the echo,
// so a round trip costs the load generator a share of one io_uring_enter
// rather than a write, a read and a goroutine switch or two.
//
// The ring code is the minimum this needs, written against the raw system
// calls (io_uring_setup, io_uring_enter) and mmap; see io_uring(7).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	sysIOUringSetup = 425
	sysIOUringEnter = 426

	// io_uring_params.flags
	setupSubmitAll    = 1 << 7
	setupCoopTaskrun  = 1 << 8
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13

	// io_uring_params.features
	featSingleMmap = 1 << 0
	featNoDrop     = 1 << 1
	featFastPoll   = 1 << 5
	featCQESkip    = 1 << 11

	enterGetEvents = 1 << 0

	// mmap offsets
	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	opSend = 26
	opRecv = 27

	// sqe.flags
	sqeIOLink         = 1 << 2
	sqeCQESkipSuccess = 1 << 6

	// maxRingEntries is the kernel's limit on SQ entries.
	maxRingEntries = 32768
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

// sqe is struct io_uring_sqe (64 bytes).
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	_           uint64
}

// cqe is struct io_uring_cqe (16 bytes; no IORING_SETUP_CQE32).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// Compile-time checks of the ABI sizes.
var (
	_ [120 - unsafe.Sizeof(uringParams{})]byte
	_ [unsafe.Sizeof(uringParams{}) - 120]byte
	_ [64 - unsafe.Sizeof(sqe{})]byte
	_ [unsafe.Sizeof(sqe{}) - 64]byte
	_ [16 - unsafe.Sizeof(cqe{})]byte
	_ [unsafe.Sizeof(cqe{}) - 16]byte
)

// ring is one io_uring instance, used by one thread.
type ring struct {
	fd                    int
	flags, features       uint32
	single                bool // SQ and CQ rings share one mapping
	sqMem, cqMem, sqeMem  []byte
	sqHead, sqTail        *uint32 // shared with the kernel
	cqHead, cqTail        *uint32
	sqMask, sqEntries     uint32
	cqMask                uint32
	sqes                  []sqe
	cqes                  []cqe
	tail                  uint32 // our SQ tail, published before each enter
	pending               uint32 // SQEs queued and not yet consumed by the kernel
	enters, reaped, waits uint64
}

// uringFlagSets are tried in order; a kernel that does not know a flag
// fails setup with EINVAL. DEFER_TASKRUN (6.1) runs completion work only
// when we enter to wait, in our context: no interrupts of the thread, and
// completions batch up while it works.
var uringFlagSets = []uint32{
	setupSingleIssuer | setupDeferTaskrun | setupSubmitAll,
	setupSingleIssuer | setupCoopTaskrun | setupSubmitAll,
	setupCoopTaskrun,
	0,
}

// newRing sets up a ring with at least entries SQ entries. It must be
// called on the thread that will submit (SINGLE_ISSUER).
func newRing(entries uint32) (*ring, error) {
	var p uringParams
	var err error
	var fd uintptr
	for _, flags := range uringFlagSets {
		p = uringParams{flags: flags}
		var errno unix.Errno
		fd, _, errno = unix.Syscall(sysIOUringSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
		if errno == 0 {
			err = nil
			break
		}
		err = errno
		if errno != unix.EINVAL {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("io_uring_setup: %w", err)
	}
	r := &ring{fd: int(fd), flags: p.flags, features: p.features}
	if err := r.mmap(&p); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *ring) mmap(p *uringParams) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(cqe{}))
	single := p.features&featSingleMmap != 0
	r.single = single
	if single {
		sqSize = max(sqSize, cqSize)
	}
	const prot, flags = unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED | unix.MAP_POPULATE
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, offSQRing, sqSize, prot, flags); err != nil {
		return fmt.Errorf("mmap SQ ring: %w", err)
	}
	if single {
		r.cqMem = r.sqMem
	} else if r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqSize, prot, flags); err != nil {
		return fmt.Errorf("mmap CQ ring: %w", err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(sqe{})), prot, flags); err != nil {
		return fmt.Errorf("mmap SQEs: %w", err)
	}
	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	r.sqHead, r.sqTail = u32(r.sqMem, p.sqOff.head), u32(r.sqMem, p.sqOff.tail)
	r.sqMask, r.sqEntries = *u32(r.sqMem, p.sqOff.ringMask), *u32(r.sqMem, p.sqOff.ringEntries)
	r.cqHead, r.cqTail = u32(r.cqMem, p.cqOff.head), u32(r.cqMem, p.cqOff.tail)
	r.cqMask = *u32(r.cqMem, p.cqOff.ringMask)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	// The SQ index array maps ring slot i to SQE i, once and for all.
	array := unsafe.Slice(u32(r.sqMem, p.sqOff.array), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.tail = atomic.LoadUint32(r.sqTail)
	return nil
}

func (r *ring) close() {
	if r.single {
		r.cqMem = nil
	}
	for _, m := range [][]byte{r.sqeMem, r.cqMem, r.sqMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	r.sqeMem, r.cqMem, r.sqMem = nil, nil, nil
	unix.Close(r.fd)
}

// describe names the setup flags in use and the features relied on.
func (r *ring) describe() string {
	var f []string
	for _, x := range []struct {
		bit  uint32
		name string
	}{{setupSingleIssuer, "SINGLE_ISSUER"}, {setupDeferTaskrun, "DEFER_TASKRUN"}, {setupCoopTaskrun, "COOP_TASKRUN"}, {setupSubmitAll, "SUBMIT_ALL"}} {
		if r.flags&x.bit != 0 {
			f = append(f, x.name)
		}
	}
	if len(f) == 0 {
		f = append(f, "no setup flags")
	}
	s := strings.Join(f, "|")
	if r.features&featCQESkip != 0 {
		s += ", send CQEs skipped on success"
	}
	return s
}

// reserve makes room for n SQEs, submitting what is queued if need be.
func (r *ring) reserve(n uint32) error {
	for r.tail-atomic.LoadUint32(r.sqHead)+n > r.sqEntries {
		if err := r.enter(0); err != nil {
			return err
		}
	}
	return nil
}

// next returns the next free SQE, zeroed; reserve must have made room.
func (r *ring) next() *sqe {
	e := &r.sqes[r.tail&r.sqMask]
	*e = sqe{}
	r.tail++
	r.pending++
	return e
}

// enter publishes the queued SQEs, submits them and, with minComplete > 0,
// waits for that many completions.
func (r *ring) enter(minComplete uint32) error {
	atomic.StoreUint32(r.sqTail, r.tail) // release: the SQEs are written
	var flags uintptr
	if minComplete > 0 {
		flags = enterGetEvents
		r.waits++
	}
	for {
		r.enters++
		n, _, errno := unix.Syscall6(sysIOUringEnter, uintptr(r.fd), uintptr(r.pending), uintptr(minComplete), flags, 0, 0)
		switch errno {
		case 0:
			r.pending -= uint32(n)
			return nil
		case unix.EINTR:
			continue // nothing was submitted
		case unix.EAGAIN, unix.EBUSY:
			return nil // out of resources or CQ overflow: reap, then retry
		default:
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// reap calls f for every available completion, then frees their slots.
func (r *ring) reap(f func(*cqe)) int {
	head := *r.cqHead // only we write it
	tail := atomic.LoadUint32(r.cqTail)
	for h := head; h != tail; h++ {
		f(&r.cqes[h&r.cqMask])
	}
	atomic.StoreUint32(r.cqHead, tail) // release: done with the slots
	r.reaped += uint64(tail - head)
	return int(tail - head)
}

// uringProbe tells whether an io_uring can be set up here, and how.
func uringProbe() (string, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := newRing(8)
	if err != nil {
		return "", err
	}
	defer r.close()
	if r.features&featFastPoll == 0 {
		return "", errors.New("kernel lacks IORING_FEAT_FAST_POLL (needs Linux 5.7)")
	}
	return r.describe(), nil
}

// ---- the load generator ----

// uconn is one connection of the io_uring load generator.
type uconn struct {
	fd        int32
	out, in   []byte
	sent, got int    // bytes of the current request sent, of its echo received
	gen       uint32 // round trip number, to tell stale completions
	sendDone  bool   // the send's completion arrived (short or failed)
	canceled  bool   // the linked recv was cancelled by a short send
	active    bool
	seq       byte
	userLower uint64
}

// tag is the user_data of the current round's operations, less the
// operation bit: connection index, round trip number (31 bits), op.
func (c *uconn) tag() uint64 { return c.userLower | uint64(c.gen&genMask)<<1 }

const genMask = 1<<31 - 1

// uringLoad is the io_uring load generator.
type uringLoad struct {
	conns  []uconn
	fds    []int // the connections' sockets, closed by close
	size   int
	wait   int           // completions to wait for per enter
	skip   uint8         // sqeCQESkipSuccess, if the kernel has it
	active int           // connections with a round trip in flight
	parked []int         // connections paused between round trips (see pause)
	n      atomic.Uint64 // round trips completed
	done   chan struct{}
	gate
	stats  string // ring figures, for tests and debugging
	cutOff int    // connections that failed after stop: close shut them down
	firstError
}

const (
	tagSend = 0
	tagRecv = 1
)

// uringWait is how many completions the load generator waits for per
// io_uring_enter when not told: a quarter of the connections, at most 64.
// Each time it sleeps, the server pays to wake it (on loopback the
// server's write delivers the echo and wakes the receiver, in a guest an
// interrupt to the other CPU): waiting for one completion at a time made
// the servers' CPU per round trip depend on the load generator (gnet's
// by half) and the load generator cost nearly as much as a server. Three
// quarters of the connections stay queued at the server.
func uringWait(conns int) int { return min(max(conns/4, 1), 64) }

// startUringLoad connects n connections to addr and starts the load:
// size-byte messages, waiting for wait completions per enter (0: uringWait).
func startUringLoad(ctx context.Context, addr string, n, size, wait int) (*uringLoad, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	if wait <= 0 {
		wait = uringWait(n)
	}
	l := &uringLoad{conns: make([]uconn, n), size: size, wait: wait, done: make(chan struct{}), firstError: firstError{prefix: "load"}}
	buf := make([]byte, 2*n*size)
	for i := range l.conns {
		c := &l.conns[i]
		c.fd = -1
		c.out, c.in = buf[2*i*size:(2*i+1)*size:(2*i+1)*size], buf[(2*i+1)*size:(2*i+2)*size:(2*i+2)*size]
		for j := range c.out {
			c.out[j] = byte(i*131 + j*7 + 1) // a per-connection pattern
		}
		c.seq = byte(i)
		c.out[0] = c.seq
		c.userLower = uint64(i) << 32
	}
	for i := range l.conns {
		if err := ctx.Err(); err != nil {
			l.closeFDs()
			return nil, err
		}
		fd, err := dialRaw(ap)
		if err != nil {
			l.closeFDs()
			return nil, fmt.Errorf("connection %d: %w", i+1, err)
		}
		l.conns[i].fd = int32(fd)
		l.fds = append(l.fds, fd)
	}
	ready := make(chan error, 1)
	go l.loop(ready)
	if err := <-ready; err != nil {
		<-l.done
		l.closeFDs()
		return nil, err
	}
	return l, nil
}

// dialRaw connects a blocking TCP socket, outside Go's netpoller, which
// would otherwise be told about every arriving echo.
func dialRaw(ap netip.AddrPort) (int, error) {
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	// SO_SNDTIMEO bounds a blocking connect on Linux.
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	if err == nil {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // as net does
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	return fd, nil
}

func (l *uringLoad) closeFDs() {
	for _, fd := range l.fds {
		unix.Close(fd)
	}
	l.fds = nil
}

// loop owns the ring and every connection until all are done.
func (l *uringLoad) loop(ready chan<- error) {
	// The ring, set up for a single issuer, is used from this thread
	// alone. The thread is unlocked again once the ring is closed, not
	// left to exit with the goroutine: a server child the bench started
	// from it would get its parent-death signal (SIGKILL) with it, since
	// Pdeathsig follows the forking thread, not the process.
	runtime.LockOSThread()
	defer close(l.done)
	defer runtime.UnlockOSThread() // after r.close (deferred later, run first)
	var ru0 unix.Rusage
	unix.Getrusage(unix.RUSAGE_THREAD, &ru0) // the thread may have served earlier loads
	entries := uint32(2)
	for entries < uint32(2*len(l.conns)) && entries < maxRingEntries {
		entries *= 2
	}
	r, err := newRing(entries)
	if err != nil {
		ready <- err
		return
	}
	defer r.close() // cancels whatever is still in flight
	if r.features&featCQESkip != 0 {
		l.skip = sqeCQESkipSuccess
	}
	for i := range l.conns {
		l.conns[i].active = true
		if err := l.request(r, &l.conns[i]); err != nil {
			ready <- err
			return
		}
	}
	l.active = len(l.conns)
	ready <- nil

	done := func(e *cqe) { l.complete(r, e) }
	yielded := time.Now()
	for i := 0; ; i++ {
		if l.active == 0 {
			if len(l.parked) == 0 || !l.hold() {
				break // every connection finished, or closed while paused
			}
			for _, ci := range l.parked {
				if err := l.request(r, &l.conns[ci]); err != nil {
					l.connFail(&l.conns[ci], err)
					continue
				}
				l.active++
			}
			l.parked = l.parked[:0]
			continue
		}
		// Wait for up to wait completions: every active connection
		// has one coming.
		if err := r.enter(uint32(min(l.wait, l.active))); err != nil {
			l.fail(err)
			break
		}
		r.reap(done)
		if i%64 == 63 && time.Since(yielded) > 2*time.Millisecond {
			// Pass through the scheduler now and then: a goroutine
			// that never does looks stuck to sysmon, which then
			// preempts it every 10 ms, takes its P and polls at
			// 20 µs again, costing this CPU several per cent. Not
			// often, though: a locked thread's Gosched hands its P
			// to another thread and back.
			runtime.Gosched()
			yielded = time.Now()
		}
	}
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	l.stats = fmt.Sprintf("%d round trips, %d enters (%d waits), %d completions; thread: %d voluntary and %d involuntary context switches, user %v sys %v",
		l.n.Load(), r.enters, r.waits, r.reaped, ru.Nvcsw-ru0.Nvcsw, ru.Nivcsw-ru0.Nivcsw,
		time.Duration(ru.Utime.Nano()-ru0.Utime.Nano()), time.Duration(ru.Stime.Nano()-ru0.Stime.Nano()))
}

// request queues the rest of the current request (a send) linked to a
// receive of the rest of its echo.
func (l *uringLoad) request(r *ring, c *uconn) error {
	if err := r.reserve(2); err != nil {
		return err
	}
	c.sendDone, c.canceled = false, false
	tag := c.tag()
	s := r.next()
	s.opcode, s.flags, s.fd = opSend, sqeIOLink|l.skip, c.fd
	s.addr = uint64(uintptr(unsafe.Pointer(&c.out[c.sent])))
	// MSG_WAITALL: the kernel retries a short send itself (6.0), or
	// fails it, which cancels the linked recv (see complete); without
	// it a short send would count as success and the recv would wait
	// for an echo of bytes never sent.
	s.len, s.opFlags = uint32(l.size-c.sent), unix.MSG_NOSIGNAL|unix.MSG_WAITALL
	s.userData = tag | tagSend
	l.recv(r, c, tag)
	return nil
}

func (l *uringLoad) recv(r *ring, c *uconn, tag uint64) {
	s := r.next()
	s.opcode, s.fd = opRecv, c.fd
	s.addr = uint64(uintptr(unsafe.Pointer(&c.in[c.got])))
	s.len = uint32(l.size - c.got)
	s.userData = tag | tagRecv
}

// complete handles one completion.
func (l *uringLoad) complete(r *ring, e *cqe) {
	c := &l.conns[e.userData>>32]
	if !c.active {
		return // a connection that failed or finished
	}
	if uint32(e.userData)>>1 != c.gen&genMask {
		// The send completion of a finished round (sends whose
		// completions are not skipped): it succeeded, or the round
		// could not have finished.
		return
	}
	if e.userData&1 == tagSend {
		if e.res < 0 {
			l.connFail(c, fmt.Errorf("send: %w", unix.Errno(-e.res)))
			return
		}
		c.sent += int(e.res)
		c.sendDone = true
		if c.sent < l.size && c.canceled {
			l.resubmit(r, c)
		}
		return
	}
	switch {
	case e.res == -int32(unix.ECANCELED) && c.sent < l.size:
		// The send was short (or failed), which cancels the linked recv;
		// resubmit once its completion told how much went out.
		c.canceled = true
		if c.sendDone {
			l.resubmit(r, c)
		}
	case e.res < 0:
		l.connFail(c, fmt.Errorf("recv: %w", unix.Errno(-e.res)))
	case e.res == 0:
		l.connFail(c, errors.New("recv: connection closed by the server"))
	default:
		c.sent = l.size // the recv ran, so its linked send completed
		c.got += int(e.res)
		if c.got < l.size {
			if err := r.reserve(1); err != nil {
				l.connFail(c, err)
				return
			}
			l.recv(r, c, c.tag())
			return
		}
		if !bytes.Equal(c.in, c.out) {
			l.connFail(c, errors.New("echo returned different bytes"))
			return
		}
		l.n.Add(1)
		if l.stop.Load() {
			l.finish(c)
			return
		}
		c.seq++
		c.out[0] = c.seq
		c.sent, c.got = 0, 0
		c.gen++
		if l.paused() {
			l.active--
			l.parked = append(l.parked, int(e.userData>>32))
			return
		}
		if err := l.request(r, c); err != nil {
			l.connFail(c, err)
		}
	}
}

func (l *uringLoad) resubmit(r *ring, c *uconn) {
	if l.stop.Load() {
		l.finish(c)
		return
	}
	if err := l.request(r, c); err != nil {
		l.connFail(c, err)
	}
}

func (l *uringLoad) finish(c *uconn) {
	c.active = false
	l.active--
}

func (l *uringLoad) connFail(c *uconn, err error) {
	l.finish(c)
	if l.stop.Load() {
		l.cutOff++
	}
	l.fail(err)
}

func (l *uringLoad) total() uint64 { return l.n.Load() }

func (l *uringLoad) pause() error {
	loops := func() int {
		select {
		case <-l.done:
			return 0
		default:
			return 1
		}
	}
	if l.gate.pause(loops) > 0 {
		return stalledError(-1, len(l.conns)) // the loop, not each connection, holds
	}
	return nil
}

// close stops the load: connections finish their round trip in flight;
// those that cannot within stuckAfter are shut down, and counted.
func (l *uringLoad) close() (stuck int) {
	l.stop.Store(true)
	l.release()
	select {
	case <-l.done:
	case <-time.After(stuckAfter):
		for _, fd := range l.fds {
			unix.Shutdown(fd, unix.SHUT_RDWR) // ends the receives the loop waits for
		}
		<-l.done
		stuck = l.cutOff // (the loop is done with it)
	}
	l.closeFDs()
	return stuck
}
