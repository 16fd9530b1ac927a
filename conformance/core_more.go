//go:build unix

package conformance

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/internal/goid"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// moreCoreTests are the core-level tests of the completeness items:
// several service threads, raw files, UDP, accept limits, attach, close
// policy and client connections.
func (s *suite) moreCoreTests() []subtest {
	return []subtest{
		{"SMP", s.testSMP},
		{"RawFileLifecycle", s.testRawFiles},
		{"RawFileResume", s.testRawFileResume},
		{"UDPLifecycle", s.testUDP},
		{"AcceptFDLimit", s.testAcceptLimit},
		{"AcceptEMFILE", s.testAcceptEMFILE},
		{"AcceptPace", s.testAcceptPace},
		{"HighFD", s.testHighFD},
		{"Attach", s.testAttach},
		{"ClosePolicy", s.testClosePolicy},
		{"Connect", s.testConnect},
		{"ConnectRacing", s.testConnectRacing},
	}
}

func nop(core.Event) error { return nil }

// Checklist 34: with CountThreads 2 and 3 each thread runs its callbacks
// on one goroutine of its own (Run starts them; in foreign mode each
// thread's application loop is one), an accepted connection goes to the
// least-loaded thread (the listener counts on thread 0, a tie keeps it on
// the accepting thread) and is serviced by its own thread only, even under
// concurrent traffic. Checklist 20: Thread.CancelService wakes its own
// thread only, Context.CancelService every thread. In foreign mode a host
// that runs a single loop cannot drive several threads: the test is
// skipped there, saying so.
func (s *suite) testSMP(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(strings.Repeat("I", n), func(t *testing.T) { s.testSMPThreads(t, n) })
	}
}

func (s *suite) testSMPThreads(t *testing.T, threads int) {
	info := echoInfo()
	info.CountThreads = threads
	h := s.newHarness(t, info)
	require.Equal(t, threads, h.ctx.CountThreads())
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	h.start()
	h.sync()
	from := h.rec.mark()

	open := map[*core.Conn]net.Conn{}
	loads := func() []int {
		l := make([]int, threads)
		l[0] = 1 // the listener
		for c := range open {
			l[c.Thread().Index()]++
		}
		return l
	}
	least := func(l []int) []int {
		m := l[0]
		for _, v := range l {
			m = min(m, v)
		}
		var idx []int
		for i, v := range l {
			if v == m {
				idx = append(idx, i)
			}
		}
		return idx
	}
	dial := func() *core.Conn {
		mark := h.rec.mark()
		c, err := net.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		e := h.rec.waitEventFrom(t, "RAW_ADOPT of an accepted connection", mark, is(core.ReasonRawAdopt, nil))
		open[e.conn] = c
		return e.conn
	}
	for range 2 * threads {
		before := loads()
		c := dial()
		require.Contains(t, least(before), c.Thread().Index(), "connection placed on thread %d with loads %v", c.Thread().Index(), before)
	}
	l := loads()
	require.LessOrEqual(t, max(l[0], l[1], l[threads-1])-min(l[0], l[1], l[threads-1]), 1, "least-loaded placement spreads evenly: loads %v", l)
	for i := range threads {
		require.GreaterOrEqual(t, l[i], 2, "thread %d got its share: loads %v", i, l)
	}
	// Empty the last thread: the next connection must go there.
	last := threads - 1
	for c, p := range open {
		if c.Thread().Index() == last {
			p.Close()
			h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
			delete(open, c)
		}
	}
	// Thread 0 reserves room for its next accept before accept(2), on the
	// thread least loaded then; it may still hold room reserved before the
	// closes. Its next pass starts from the loads as they are now.
	h.do(func() {})
	c := dial()
	require.Equal(t, last, c.Thread().Index(), "the least-loaded thread gets the next connection")

	// Explicit adoption from a callback of thread 0 is placed the same
	// way, or on the thread OnThread names, and adopted by that thread
	// (handed over when it is another one; the exclusivity check below
	// covers where its callbacks ran).
	adopt := func(opts ...core.AdoptOption) *core.Conn {
		fd, peer := unixPair(t)
		mark := h.rec.mark()
		var c *core.Conn
		var err error
		h.do(func() { c, err = h.ctx.AdoptFD(fd, "", opts...) })
		require.NoError(t, err, "AdoptFD from a callback of thread 0")
		h.rec.waitEventFrom(t, "RAW_ADOPT of an adopted fd", mark, is(core.ReasonRawAdopt, c))
		open[c] = peer
		return c
	}
	before := loads()
	c = adopt()
	require.Contains(t, least(before), c.Thread().Index(), "AdoptFD placed on thread %d with loads %v", c.Thread().Index(), before)
	for i := range threads {
		require.Equal(t, i, adopt(core.OnThread(i)).Thread().Index(), "AdoptFD with OnThread(%d)", i)
	}

	// Concurrent traffic on every connection.
	var wg sync.WaitGroup
	errs := make(chan error, len(open))
	seed := uint64(0)
	for _, p := range open {
		seed++
		wg.Add(1)
		go func(p net.Conn, seed uint64) {
			defer wg.Done()
			errs <- roundTrips(p, 340+seed, 20)
		}(p, seed)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	// Context.CancelService wakes every thread: each delivers
	// EVENT_WAIT_CANCELLED itself (the check below covers the goroutine).
	mark := h.rec.mark()
	require.NoError(t, h.ctx.CancelService())
	for i := range threads {
		h.rec.waitEventFrom(t, "EVENT_WAIT_CANCELLED on thread "+strconv.Itoa(i), mark, func(e event) bool {
			return e.reason == core.ReasonEventWaitCancelled && e.ti == i
		})
	}

	// Checklist 20: Thread.CancelService wakes that thread only. Two
	// posted round trips on every other thread afterwards run in passes
	// after any wake-up the call could have caused there, so a stray
	// delivery would be recorded by the time they return.
	passes := func(j int) {
		for range 2 {
			done := make(chan struct{})
			require.NoError(t, h.ctx.Thread(j).Post(func() { close(done) }))
			waitCh(t, done, "posted function to run on thread "+strconv.Itoa(j))
		}
	}
	for i := range threads {
		mark := h.rec.mark()
		require.NoError(t, h.ctx.Thread(i).CancelService())
		h.rec.waitEventFrom(t, "EVENT_WAIT_CANCELLED on thread "+strconv.Itoa(i), mark, func(e event) bool {
			return e.reason == core.ReasonEventWaitCancelled && e.ti == i
		})
		for j := range threads {
			passes(j)
		}
		for _, e := range h.rec.snapshot()[mark:] {
			require.False(t, e.reason == core.ReasonEventWaitCancelled && e.ti != i,
				"Thread(%d).CancelService delivered EVENT_WAIT_CANCELLED on thread %d", i, e.ti)
		}
	}

	// Exclusivity: a connection's callbacks all run on its own thread, every
	// thread runs some, and a thread's callbacks never overlap (the
	// recorder checks that). Unless the backend declares library
	// goroutines, each thread also runs on a goroutine of its own, thread 0
	// on Run's (in foreign mode: on its application loop's).
	gs := map[int]uint64{0: h.runG.Load()}
	for _, r := range h.hosts {
		gs[r.thread] = r.runG.Load() // each thread on its own application loop
	}
	ran := map[int]bool{}
	for _, e := range h.rec.snapshot()[from:] {
		if e.ti < 0 {
			continue
		}
		ran[e.ti] = true
		if e.conn != nil {
			require.Equal(t, e.conn.Thread().Index(), e.ti, "%v: serviced by another thread than its own", e)
		}
		if !s.oneGoroutine() {
			continue
		}
		if g, ok := gs[e.ti]; ok {
			require.Equal(t, g, e.g, "%v: thread %d's callbacks run on goroutine %d", e, e.ti, g)
		} else {
			gs[e.ti] = e.g
		}
	}
	require.Len(t, ran, threads, "every thread ran callbacks")
	if s.oneGoroutine() {
		seen := map[uint64]int{}
		for i, g := range gs {
			if j, dup := seen[g]; dup {
				t.Fatalf("conformance: threads %d and %d share goroutine %d", i, j, g)
			}
			seen[g] = i
		}
	}
	h.rec.verify(t)
}

// Checklist 36 with rx flow control: an adopted pipe paused while input
// arrives (its read interest dropped) gets RAW_RX_FILE for that input once
// resumed, with nothing more written: the backend must look again for
// input it saw, or that came, while only the pipe's end was watched.
func (s *suite) testRawFileResume(t *testing.T) {
	s.needFiles(t, "pipes are not tested")
	var got []byte // loop goroutine
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "file", Callback: func(ev core.Event) error {
		if ev.Reason == core.ReasonRawRXFile {
			var b [256]byte
			n, _ := unix.Read(ev.Conn.FD(), b[:])
			got = append(got, b[:max(n, 0)]...)
		}
		return nil
	}}}})
	var p [2]int
	require.NoError(t, nonblockPipe(&p))
	defer unix.Close(p[1])
	conn, err := h.ctx.AdoptFile(p[0], "")
	if err != nil {
		unix.Close(p[0])
	}
	require.NoError(t, err)
	require.NoError(t, conn.RxFlowControl(false))
	h.start()
	mark := h.rec.mark()
	_, err = unix.Write(p[1], []byte("held"))
	require.NoError(t, err)
	h.rec.waitEventFrom(t, "read interest dropped while paused", mark, func(e event) bool {
		return e.reason == core.ReasonChangeModePollFD && e.fd == conn.FD() && e.poll.Events&evlib.Readable == 0
	})
	h.sync()
	var resumeErr error
	h.do(func() { resumeErr = conn.RxFlowControl(true) })
	require.NoError(t, resumeErr)
	h.rec.waitEventFrom(t, "RAW_RX_FILE after resume", mark, is(core.ReasonRawRX, conn)) // the recorder files it under RAW_RX
	var s2 string
	h.do(func() { s2 = string(got) })
	require.Equal(t, "held", s2)
	h.rec.verify(t)
}

// Checklist 36: raw files. A pipe's or FIFO's read end adopted with
// AdoptFile gets RAW_ADOPT_FILE, RAW_RX_FILE when readable (the callback
// reads; the core does not), and RAW_CLOSE_FILE with io.EOF once its last
// writer is gone; a write end gets RAW_WRITEABLE_FILE after
// CallbackOnWritable and Conn.Write works there; Conn.Close ends with
// RAW_CLOSE_FILE and a nil Err. A regular file is refused with
// ErrNotPollable on every backend, and the caller keeps it. A backend that
// declares it lacks evlib.CapFiles refuses AdoptFile with ErrInvalid.
func (s *suite) testRawFiles(t *testing.T) {
	var mu sync.Mutex
	got := map[*core.Conn][]byte{}
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawRXFile:
			if ev.Data != nil {
				return errors.New("conformance: RAW_RX_FILE with data: the core must not read files")
			}
			var b [256]byte
			n, _ := unix.Read(ev.Conn.FD(), b[:])
			mu.Lock()
			got[ev.Conn] = append(got[ev.Conn], b[:max(n, 0)]...)
			mu.Unlock()
		case core.ReasonRawWriteableFile:
			_, err := ev.Conn.Write([]byte("out"))
			return err
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "file", Callback: cb}}})

	f, err := os.Create(filepath.Join(t.TempDir(), "regular"))
	require.NoError(t, err)
	defer f.Close()
	_, err = h.ctx.AdoptFile(int(f.Fd()), "")
	require.ErrorIs(t, err, core.ErrNotPollable, "a regular file")
	_, err = f.Write([]byte("still the caller's"))
	require.NoError(t, err)

	var in [2]int
	require.NoError(t, nonblockPipe(&in))
	if s.desc.Caps&evlib.CapFiles == 0 {
		_, err := h.ctx.AdoptFile(in[0], "")
		require.ErrorIs(t, err, core.ErrInvalid, "AdoptFile on a backend without evlib.CapFiles")
		require.True(t, fdOpen(in[0]), "a refused fd stays the caller's")
		unix.Close(in[0])
		unix.Close(in[1])
		t.Skipf("conformance: backend %q declares it lacks evlib.CapFiles: AdoptFile refused as declared", s.name)
	}
	rc, err := h.ctx.AdoptFile(in[0], "")
	if err != nil {
		unix.Close(in[0])
	}
	defer unix.Close(in[1])
	require.NoError(t, err)

	fifo := filepath.Join(shortTempDir(t), "fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	ffd, err := unix.Open(fifo, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	wfd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(ffd)
	}
	require.NoError(t, err)
	defer unix.Close(wfd)
	fc, err := h.ctx.AdoptFile(ffd, "")
	if err != nil {
		unix.Close(ffd)
	}
	require.NoError(t, err)

	var out [2]int
	require.NoError(t, nonblockPipe(&out))
	defer unix.Close(out[0])
	wc, err := h.ctx.AdoptFile(out[1], "")
	if err != nil {
		unix.Close(out[1])
	}
	require.NoError(t, err)
	h.start()

	for _, x := range []struct {
		c  *core.Conn
		fd *int
	}{{rc, &in[1]}, {fc, &wfd}} {
		_, err := unix.Write(*x.fd, []byte("hello"))
		require.NoError(t, err)
		h.rec.waitEvent(t, "RAW_RX_FILE", is(core.ReasonRawRX, x.c))
		waitUntil(t, "the callback to read the file", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(got[x.c]) >= 5
		})
		require.NoError(t, unix.Close(*x.fd))
		*x.fd = -1
		e := h.rec.waitEvent(t, "RAW_CLOSE_FILE at end of file (the core learns it from a Hangup report: see evlib.Hangup)", is(core.ReasonRawClose, x.c))
		require.ErrorIs(t, e.err, io.EOF)
		mu.Lock()
		require.Equal(t, "hello", string(got[x.c]))
		mu.Unlock()
	}

	h.do(func() { err = wc.CallbackOnWritable() })
	require.NoError(t, err)
	h.rec.waitEvent(t, "RAW_WRITEABLE_FILE", is(core.ReasonRawWriteable, wc))
	var b [8]byte
	waitUntil(t, "the pipe to carry what RAW_WRITEABLE_FILE wrote", func() bool {
		n, _ := unix.Read(out[0], b[:])
		if n > 0 {
			require.Equal(t, "out", string(b[:n]))
			return true
		}
		return false
	})
	h.do(func() { err = wc.Close() })
	require.NoError(t, err)
	e := h.rec.waitEvent(t, "RAW_CLOSE_FILE after Close", is(core.ReasonRawClose, wc))
	require.NoError(t, e.err)

	// Every file event was a RAW_*_FILE one, in lifecycle order.
	for _, c := range []*core.Conn{rc, fc, wc} {
		var order []core.Reason
		for _, e := range h.rec.snapshot() {
			if e.conn == c && !isPollReason(e.reason) {
				require.True(t, e.file, "%v: a file connection gets the RAW_*_FILE reasons", e)
				if len(order) == 0 || order[len(order)-1] != e.reason {
					order = append(order, e.reason)
				}
			}
		}
		require.Equal(t, core.ReasonRawAdopt, order[0])
		require.Equal(t, core.ReasonRawClose, order[len(order)-1])
	}
	h.rec.verify(t)
}

// Checklist 36: a UDP socket from ListenUDP gets RAW_ADOPT, then one RAW_RX
// per datagram, in order, with Event.From the sender; CallbackOnWritable
// is granted on a following pass without any network event; WriteTo
// there reaches the sender from the socket's LocalAddr; Close ends it with
// RAW_CLOSE and a nil Err.
func (s *suite) testUDP(t *testing.T) {
	type dgram struct {
		data string
		from netip.AddrPort
	}
	var mu sync.Mutex
	var rx []dgram
	var writeErr error
	cb := func(ev core.Event) error {
		switch ev.Reason {
		case core.ReasonRawRX:
			mu.Lock()
			rx = append(rx, dgram{string(ev.Data), ev.From})
			mu.Unlock()
			return ev.Conn.CallbackOnWritable()
		case core.ReasonRawWriteable:
			mu.Lock()
			d := rx[len(rx)-1]
			mu.Unlock()
			if _, err := ev.Conn.WriteTo([]byte("re:"+d.data), d.from); err != nil {
				writeErr = err
			}
		}
		return nil
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "udp", Callback: cb}}})
	srv, err := h.ctx.ListenUDP("udp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	local, ok := srv.LocalAddr().(*net.UDPAddr)
	require.True(t, ok && local.Port != 0, "LocalAddr %#v", srv.LocalAddr())
	h.start()
	cl, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer cl.Close()
	clAddr := cl.LocalAddr().(*net.UDPAddr).AddrPort()
	require.NoError(t, cl.SetReadDeadline(time.Now().Add(hang)))
	buf := make([]byte, 64)
	for _, m := range []string{"a", "bb", "ccc"} {
		mark := h.rec.mark()
		_, err := cl.WriteTo([]byte(m), local)
		require.NoError(t, err)
		rxe := h.rec.waitEventFrom(t, "RAW_RX of a datagram", mark, is(core.ReasonRawRX, srv))
		require.Equal(t, len(m), rxe.data, "one RAW_RX per datagram")
		we := h.rec.waitEventFrom(t, "RAW_WRITEABLE after CallbackOnWritable", mark, is(core.ReasonRawWriteable, srv))
		require.Greater(t, we.seq, rxe.seq)
		n, from, err := cl.ReadFrom(buf)
		require.NoError(t, err)
		require.Equal(t, "re:"+m, string(buf[:n]))
		require.Equal(t, local.AddrPort(), from.(*net.UDPAddr).AddrPort())
	}
	var werr error
	var got []dgram
	h.do(func() {
		mu.Lock()
		werr, got = writeErr, append([]dgram(nil), rx...)
		mu.Unlock()
		err = srv.Close()
	})
	require.NoError(t, werr)
	require.Len(t, got, 3)
	for i, m := range []string{"a", "bb", "ccc"} {
		require.Equal(t, m, got[i].data)
		require.Equal(t, clAddr, got[i].from, "Event.From")
	}
	require.NoError(t, err)
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, srv))
	require.NoError(t, e.err)
	var order []core.Reason
	for _, e := range h.rec.snapshot() {
		if e.conn == srv && !isPollReason(e.reason) {
			order = append(order, e.reason)
		}
	}
	require.Equal(t, core.ReasonRawAdopt, order[0], "RAW_ADOPT first: %v", order)
	require.Equal(t, core.ReasonRawClose, order[len(order)-1], "RAW_CLOSE last: %v", order)
	h.rec.verify(t)
}

// Checklist 24: at Info.FDLimit (the listener counts) a listener stops
// accepting — its read interest is taken off, connections wait in the
// kernel's backlog — and takes the next one as soon as a connection closes.
func (s *suite) testAcceptLimit(t *testing.T) {
	h := s.newHarness(t, core.Info{FDLimit: 3, Protocols: []core.Protocol{{Name: "p", Callback: nop}}})
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	lfd := ln.FD()
	h.start()
	for range 4 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
	}
	adopted := func() int { return h.rec.count(is(core.ReasonRawAdopt, nil)) }
	waitUntil(t, "two connections adopted", func() bool { return adopted() >= 2 })
	waitUntil(t, "the listener to stop", func() bool { ev, ok := h.rec.watchedFD(lfd); return ok && ev == 0 })
	h.sync()
	h.sync()
	require.Equal(t, 2, adopted(), "accepted beyond the fd limit")
	first := h.rec.waitEvent(t, "RAW_ADOPT", is(core.ReasonRawAdopt, nil)).conn
	h.do(func() { err = first.Close() })
	require.NoError(t, err)
	waitUntil(t, "a waiting connection accepted after a close", func() bool { return adopted() == 3 })
	h.sync()
	require.Equal(t, 3, adopted())
	h.rec.verify(t)
}

const childEnv = "PLUGLOOP_CONFORMANCE_CHILD"

// runInChild runs the calling test alone in a new process (the test binary
// again, selecting the test by its full name) and reports its result: for
// tests that change process-wide state such as RLIMIT_NOFILE. It returns
// true in the child, where the caller then runs the test body.
func runInChild(t *testing.T) bool {
	if os.Getenv(childEnv) == t.Name() {
		return true
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	cctx, cancel := context.WithTimeout(context.Background(), 6*hang)
	defer cancel()
	cmd := exec.CommandContext(cctx, os.Args[0], "-test.run="+strings.Join(parts, "/"), "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	switch {
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name()+" ")):
		t.Skipf("conformance: skipped in the child process:\n%s", out)
	case err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name()+" ")):
		t.Fatalf("conformance: the child process running %s alone failed (%v):\n%s", t.Name(), err, out)
	}
	return false
}

// Checklist 25: accept failing with EMFILE pauses the listener (read
// interest off, no busy accept loop, the connection stays in the backlog)
// and it resumes by itself once descriptors are available again. The test
// lowers RLIMIT_NOFILE, which is process-wide, so it runs alone in a
// child process (the test binary re-executed for this one test): nothing
// else of the test process ever sees the lowered limit.
func (s *suite) testAcceptEMFILE(t *testing.T) {
	if !runInChild(t) {
		return
	}
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "p", Callback: nop}}})
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
	require.NoError(t, err)
	lfd := ln.FD()
	port := ln.Addr().(*net.TCPAddr).Port
	h.start()
	h.sync()
	// The client's socket exists before the limit goes down; it connects
	// after, so the loop's accept is the first new descriptor asked for.
	cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	defer unix.Close(cfd)
	probe, err := unix.FcntlInt(uintptr(cfd), unix.F_DUPFD_CLOEXEC, 0)
	require.NoError(t, err)
	unix.Close(probe) // the lowest free descriptor number
	var rl unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &rl))
	low := rl
	setCur(&low, probe)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &low))
	restored := false
	restore := func() {
		if !restored {
			restored = true
			require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &rl))
		}
	}
	defer restore()
	accepts := h.th.Stats().Accepts
	require.NoError(t, unix.Connect(cfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}))
	waitUntil(t, "an accept to fail", func() bool { return h.th.Stats().Accepts > accepts })
	waitUntil(t, "the listener to pause after EMFILE", func() bool { ev, ok := h.rec.watchedFD(lfd); return ok && ev == 0 })
	h.sync()
	require.Zero(t, h.rec.count(is(core.ReasonRawAdopt, nil)), "adopted while the fd table was full")
	restore()
	h.rec.waitEvent(t, "the connection accepted once descriptors are free again", is(core.ReasonRawAdopt, nil))
	ev, _ := h.rec.watchedFD(lfd)
	require.Equal(t, evlib.Readable, ev, "the listener resumed")
	h.rec.verify(t)
}

// A listener whose connections come one at a time does not pay, for each
// of them, an accept(2) that finds the queue empty: 32 connections, each
// made once the one before it was served, cost at most 40 accept(2) calls
// (accepting until EAGAIN costs 64). And every connection of a queue gets
// accepted: 40 made while the loop is held are all served once it runs
// again, for at most one accept(2) more than there are connections. The
// core leaves connections queued only because the report of a listener
// is level-triggered: this is where a backend whose listener is reported
// once per arrival would strand them.
func (s *suite) testAcceptPace(t *testing.T) {
	h := s.newHarness(t, core.Info{Protocols: []core.Protocol{{Name: "echo", Callback: echoCallback}}})
	ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "echo")
	require.NoError(t, err)
	h.start()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		conns = append(conns, c)
		return c
	}
	const single = 32
	a0 := h.th.Stats().Accepts
	for i := range single {
		require.NoError(t, roundTrips(dial(), uint64(i), 1))
	}
	n := h.th.Stats().Accepts - a0
	require.LessOrEqual(t, n, uint64(single+single/4), "accept(2) calls for %d connections made one at a time", single)

	held, release := make(chan struct{}), make(chan struct{})
	require.NoError(t, h.th.Post(func() { close(held); <-release }))
	waitCh(t, held, "the loop to run a posted function")
	const queued = 40
	for range queued {
		dial()
	}
	a1 := h.th.Stats().Accepts
	close(release)
	for i, c := range conns[single:] {
		require.NoError(t, roundTrips(c, uint64(i), 1), "queued connection %d", i)
	}
	n = h.th.Stats().Accepts - a1
	require.LessOrEqual(t, n, uint64(queued+1), "accept(2) calls for %d queued connections", queued)
	h.rec.verify(t)
}

// Checklist 25: an fd numbered far beyond the thread's fd table (here
// Info.FDLimit 16 and an fd near 4000, or near the descriptor limit) is
// adopted, serviced and closed like any other.
func (s *suite) testHighFD(t *testing.T) {
	h := s.newHarness(t, core.Info{FDLimit: 16, Protocols: []core.Protocol{{Name: "echo", Callback: echoCallback}}})
	a, peer := unixPair(t)
	hi, err := unix.FcntlInt(uintptr(a), unix.F_DUPFD_CLOEXEC, highFD())
	unix.Close(a)
	require.NoError(t, err)
	require.GreaterOrEqual(t, hi, 16)
	c, err := h.ctx.AdoptFD(hi, "")
	if err != nil {
		unix.Close(hi)
	}
	require.NoError(t, err)
	require.Equal(t, hi, c.FD())
	h.start()
	require.NoError(t, roundTrips(peer, 25, 10))
	peer.Close()
	e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, c))
	require.ErrorIs(t, e.err, io.EOF)
	require.True(t, h.fdClosed(hi), "fd %d left open", hi)
	h.rec.verify(t)
}

// Checklist 22: functions attached from goroutines that have exited run
// once the system state is reached — not before — on the loop goroutine,
// in the order they were attached, exactly once; one attached for a state
// already reached runs on the next pass; one still waiting when the
// context is destroyed never runs, and Attach after destroy returns
// ErrDestroyed.
func (s *suite) testAttach(t *testing.T) {
	var timeKnown atomic.Bool
	info := core.Info{
		Protocols: []core.Protocol{{Name: "p", Callback: nop}},
		Notifiers: []core.Notifier{{Name: "hold", Notify: func(_ *core.Context, _, next core.SystemState) bool {
			return next != core.SystemTimeValid || timeKnown.Load()
		}}},
	}
	type run struct {
		i int
		g uint64
	}
	var mu sync.Mutex
	var ran []run
	attach := func(t *testing.T, h *harness, i int, state core.SystemState) error {
		res := make(chan error, 1)
		go func() { // gone long before fn runs
			res <- h.ctx.Attach(0, state, func() {
				mu.Lock()
				ran = append(ran, run{i, goid.ID()})
				mu.Unlock()
			})
		}()
		return waitCh(t, res, "Attach to return")
	}
	nran := func() int { mu.Lock(); defer mu.Unlock(); return len(ran) }

	t.Run("RunsOnce", func(t *testing.T) {
		ran = nil
		timeKnown.Store(false)
		h := s.newHarness(t, info)
		require.Equal(t, core.SystemCPDPreTime, h.ctx.SystemState(), "held before TIME_VALID")
		h.start()
		for i := range 3 {
			require.NoError(t, attach(t, h, i, core.SystemOperational))
		}
		h.sync()
		require.Zero(t, nran(), "attached functions ran before the state was reached")
		var err error
		h.do(func() {
			timeKnown.Store(true)
			err = h.ctx.SystemTransition(core.SystemOperational)
		})
		require.NoError(t, err)
		waitUntil(t, "the attached functions to run", func() bool { return nran() >= 3 })
		require.NoError(t, attach(t, h, 3, core.SystemInitialized))
		waitUntil(t, "a function attached for a reached state to run", func() bool { return nran() >= 4 })
		h.sync()
		mu.Lock()
		require.Len(t, ran, 4, "exactly once each")
		for i, r := range ran {
			require.Equal(t, i, r.i, "in the order attached")
			s.onLoopGoroutine(t, h, r.g, "attached function %d", i)
		}
		mu.Unlock()
		h.rec.verify(t)
	})
	for _, started := range []bool{true, false} {
		name := "NeverAfterDestroy"
		if !started {
			name += "NotRunning"
		}
		t.Run(name, func(t *testing.T) {
			ran = nil
			timeKnown.Store(false)
			h := s.newHarness(t, info)
			if started {
				h.start()
			}
			require.NoError(t, attach(t, h, 0, core.SystemOperational))
			if started {
				h.sync()
			}
			h.destroy()
			require.ErrorIs(t, attach(t, h, 1, core.SystemInitialized), core.ErrDestroyed)
			require.Zero(t, nran(), "an attached function ran although its state was never reached before destroy")
		})
	}
}

// Checklist 37: the close policy is the core's, the same on every
// backend. Conn.Close with output pending sends all of it, then closes
// (RAW_CLOSE with a nil Err); with Info.GracefulClose it then shuts the
// write side down (the peer reads end of stream), drops whatever the peer
// still sends, delivers nothing but the final RAW_CLOSE, and closes when
// the peer does — or with ErrTimeout at Info.CloseTimeout.
func (s *suite) testClosePolicy(t *testing.T) {
	// dial starts a context serving info's protocol and connects to it.
	dial := func(t *testing.T, info core.Info) (*harness, net.Conn) {
		h := s.newHarness(t, info)
		ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "")
		require.NoError(t, err)
		h.start()
		c, err := net.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return h, c
	}
	// serve writes payload in the first RAW_WRITEABLE, then closes.
	serve := func(t *testing.T, info core.Info, payload []byte) (*harness, net.Conn) {
		info.Protocols = []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				if _, err := ev.Conn.Write(payload); err != nil {
					return err
				}
				return ev.Conn.Close()
			}
			return nil
		}}}
		return dial(t, info)
	}
	readAll := func(t *testing.T, c net.Conn) []byte {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(hang)))
		b, err := io.ReadAll(c)
		require.NoError(t, err)
		return b
	}
	t.Run("Drain", func(t *testing.T) {
		payload := pattern(37, 4<<20)
		h, c := serve(t, core.Info{CloseTimeout: 6 * hang}, payload)
		require.True(t, bytes.Equal(payload, readAll(t, c)), "the peer got every byte, then end of stream")
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, nil))
		require.NoError(t, e.err)
		h.rec.verify(t)
	})
	t.Run("Graceful", func(t *testing.T) {
		h, c := serve(t, core.Info{GracefulClose: true, CloseTimeout: 6 * hang}, []byte("bye"))
		require.Equal(t, "bye", string(readAll(t, c)), "the write side shut down")
		adopt := h.rec.waitEvent(t, "RAW_ADOPT", is(core.ReasonRawAdopt, nil))
		mark := h.rec.mark()
		write(t, c, []byte("ignored"))
		h.sync()
		h.sync()
		var draining bool
		h.do(func() { draining = adopt.conn.Draining() })
		require.True(t, draining, "still waiting for the peer")
		require.Zero(t, h.rec.count(func(e event) bool { return e.seq >= mark && e.conn == adopt.conn && !isPollReason(e.reason) }),
			"a callback while waiting for the peer to close")
		require.NoError(t, c.Close())
		e := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, adopt.conn))
		h.rec.verify(t)
		require.NoError(t, e.err)
	})
	// Close cancels a RAW_WRITEABLE asked for before it: while the close
	// waits for the peer, nothing but RAW_CLOSE comes.
	t.Run("GracefulCancelsWriteable", func(t *testing.T) {
		var errs []error // loop goroutine
		info := core.Info{GracefulClose: true, CloseTimeout: 6 * hang, Protocols: []core.Protocol{{Name: "p", Callback: func(ev core.Event) error {
			if ev.Reason == core.ReasonRawAdopt {
				for _, err := range []error{ev.Conn.CallbackOnWritable(), ev.Conn.Close()} {
					if err != nil {
						errs = append(errs, err)
					}
				}
			}
			return nil
		}}}}
		h, c := dial(t, info)
		require.Empty(t, readAll(t, c), "the write side shut down, nothing written")
		adopt := h.rec.waitEvent(t, "RAW_ADOPT", is(core.ReasonRawAdopt, nil))
		h.sync()
		var e []error
		h.do(func() { e = errs })
		require.Empty(t, e)
		require.Zero(t, h.rec.count(is(core.ReasonRawWriteable, adopt.conn)), "RAW_WRITEABLE after Close")
		require.NoError(t, c.Close())
		ce := h.rec.waitEvent(t, "RAW_CLOSE", is(core.ReasonRawClose, adopt.conn))
		require.NoError(t, ce.err)
		require.Zero(t, h.rec.count(is(core.ReasonRawWriteable, adopt.conn)), "RAW_WRITEABLE after Close")
		h.rec.verify(t)
	})
	t.Run("GracefulTimeout", func(t *testing.T) {
		h, c := serve(t, core.Info{GracefulClose: true, CloseTimeout: 50 * time.Millisecond}, []byte("bye"))
		require.Equal(t, "bye", string(readAll(t, c)))
		e := h.rec.waitEvent(t, "RAW_CLOSE at CloseTimeout", is(core.ReasonRawClose, nil))
		require.ErrorIs(t, e.err, core.ErrTimeout)
		h.rec.verify(t)
	})
}

// Client connections: Connect to a listener of the same context gets
// RAW_ADOPT on both sides and carries data both ways; a refused connect
// gets CLIENT_CONNECTION_ERROR with the reason and nothing else — no
// RAW_ADOPT, no RAW_CLOSE.
func (s *suite) testConnect(t *testing.T) {
	var mu sync.Mutex
	var rx []byte
	info := core.Info{Protocols: []core.Protocol{
		{Name: "echo", Callback: echoCallback},
		{Name: "client", Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawAdopt:
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				_, err := ev.Conn.Write([]byte("hi"))
				return err
			case core.ReasonRawRX:
				mu.Lock()
				rx = append(rx, ev.Data...)
				mu.Unlock()
			}
			return nil
		}},
	}}
	t.Run("Established", func(t *testing.T) {
		h := s.newHarness(t, info)
		ln, err := h.ctx.Listen("tcp4", "127.0.0.1:0", "echo")
		require.NoError(t, err)
		h.start()
		var c *core.Conn
		var connecting bool
		h.do(func() {
			c, err = h.ctx.Connect("tcp4", ln.Addr().String(), "client")
			if err == nil {
				connecting = c.Connecting()
			}
		})
		require.NoError(t, err)
		require.True(t, connecting, "a new client connection reports Connecting")
		h.rec.waitEvent(t, "RAW_ADOPT of the client connection", is(core.ReasonRawAdopt, c))
		waitUntil(t, "the echo to come back", func() bool { mu.Lock(); defer mu.Unlock(); return len(rx) >= 2 })
		mu.Lock()
		require.Equal(t, "hi", string(rx))
		mu.Unlock()
		h.do(func() { connecting = c.Connecting(); err = c.Close() })
		require.False(t, connecting)
		require.NoError(t, err)
		h.rec.waitEvent(t, "RAW_CLOSE of the client", is(core.ReasonRawClose, c))
		e := h.rec.waitEvent(t, "RAW_CLOSE of the server side", func(e event) bool { return e.reason == core.ReasonRawClose && e.proto == "echo" })
		require.ErrorIs(t, e.err, io.EOF)
		require.Zero(t, h.rec.count(is(core.ReasonClientConnectionError, nil)))
		h.rec.verify(t)
	})
	t.Run("Refused", func(t *testing.T) {
		h := s.newHarness(t, info)
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		l.Close() // nobody listens there now
		h.start()
		var c *core.Conn
		h.do(func() { c, err = h.ctx.Connect("tcp4", addr, "client") })
		require.NoError(t, err)
		e := h.rec.waitEvent(t, "CLIENT_CONNECTION_ERROR", is(core.ReasonClientConnectionError, c))
		require.ErrorIs(t, e.err, unix.ECONNREFUSED)
		h.sync()
		var closed bool
		h.do(func() { closed = c.Closed() })
		require.True(t, closed)
		require.Zero(t, h.rec.count(func(e event) bool {
			return e.conn == c && e.reason != core.ReasonClientConnectionError && !isPollReason(e.reason)
		}),
			"callbacks other than CLIENT_CONNECTION_ERROR for a refused connection")
		h.rec.verify(t)
	})
}
