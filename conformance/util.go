//go:build unix

package conformance

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// hang bounds every wait of the suite. It is a guard against a hung loop,
// never a performance threshold: a conforming backend meets every
// condition long before it.
const hang = 10 * time.Second

// waitCh waits for ch to be closed or to deliver, failing the test after
// the hang guard.
func waitCh[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(hang):
		t.Fatalf("conformance: no %s after %v (hang guard)", what, hang)
		panic("unreachable")
	}
}

// waitUntil polls cond until it holds, failing the test after the hang
// guard. It waits for a condition, it never measures time.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("conformance: %s did not happen within %v (hang guard)", what, hang)
		}
		time.Sleep(time.Millisecond)
	}
}

// goWithin runs f on a new goroutine and fails the test if it has not
// returned after the hang guard: for calls that must not block.
func goWithin(t testing.TB, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	waitCh(t, done, what+" to return")
}

// pattern returns n deterministic pseudo-random bytes.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	p := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return p
}

// nonblockPair returns a connected AF_UNIX stream socket pair, both ends
// non-blocking and close-on-exec. The caller owns both fds.
func nonblockPair(t testing.TB) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	for _, fd := range fds {
		require.NoError(t, unix.SetNonblock(fd, true))
		unix.CloseOnExec(fd)
	}
	return fds[0], fds[1]
}

// fileConn turns a raw fd into a net.Conn (the fd is consumed), so the
// test side of a pair gets deadlines. It is closed at the end of the test.
func fileConn(t testing.TB, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "peer")
	c, err := net.FileConn(f)
	f.Close()
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// unixPair returns a socket pair whose first end is a raw fd for the core
// (the caller hands it over or closes it) and whose second end is a
// net.Conn for the test.
func unixPair(t testing.TB) (int, net.Conn) {
	t.Helper()
	a, b := nonblockPair(t)
	return a, fileConn(t, b)
}

// tcpPair returns both ends of a loopback TCP connection. Both are closed
// at the end of the test (closing a conn the core adopted is harmless: the
// core adopted a duplicate and closed the original).
func tcpPair(t testing.TB) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	cc, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	r := waitCh(t, ch, "accept")
	require.NoError(t, r.err)
	t.Cleanup(func() { cc.Close(); r.c.Close() })
	return r.c.(*net.TCPConn), cc.(*net.TCPConn)
}

// dupFD duplicates the socket behind c as a non-blocking fd the caller owns.
func dupFD(t testing.TB, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	fd, derr := -1, error(nil)
	require.NoError(t, rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}))
	require.NoError(t, derr)
	require.NoError(t, unix.SetNonblock(fd, true))
	return fd
}

// closedFD returns an fd number that is not open. It looks well above the
// numbers the suite's sockets get, so nothing opens it meanwhile.
func closedFD(t testing.TB) int {
	t.Helper()
	for fd := highFD() - 100; fd < highFD()+16; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); errors.Is(err, unix.EBADF) {
			return fd
		}
	}
	t.Fatal("conformance: no closed fd number found near the descriptor limit")
	return -1
}

// highFD returns an fd number far above the ones in use but below the
// descriptor limit: 4000, or less where the limit is lower.
func highFD() int {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && int64(rl.Cur) > 0 && int64(rl.Cur) < 4016 {
		return int(rl.Cur) - 16
	}
	return 4000
}

// aliasOf returns a number that a system call, which takes a C int, would
// truncate to fd; ok is false where int has 32 bits.
func aliasOf(fd int) (alias int, ok bool) {
	if strconv.IntSize < 64 {
		return 0, false
	}
	shift := 32 // not a constant: 1<<32 does not compile where int has 32 bits
	return 1<<shift + fd, true
}

// fdOpen reports whether fd is an open descriptor.
func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// openFDs returns the process' open descriptors with a description of
// each: from /proc/self/fd where the system has it, else by asking fcntl
// about every number below the descriptor limit.
func openFDs() map[int]string {
	if fds, ok := procFDs(); ok {
		return fds
	}
	return fcntlFDs()
}

// procFDs lists /proc/self/fd, if there is one.
func procFDs() (map[int]string, bool) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, false
	}
	out := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own fd, closed by now
		}
		out[fd] = link
	}
	return out, true
}

// fcntlFDs finds the open descriptors below the descriptor limit (at most
// 65536) with fcntl(F_GETFD), describing each by its file type.
func fcntlFDs() map[int]string {
	out := map[int]string{}
	limit := 1 << 16
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur > 0 && int64(rl.Cur) < int64(limit) {
		limit = int(rl.Cur) // Cur is int64 on FreeBSD, uint64 elsewhere
	}
	for fd := 0; fd < limit; fd++ {
		if fdOpen(fd) {
			var st unix.Stat_t
			desc := "open"
			if unix.Fstat(fd, &st) == nil {
				desc = fmt.Sprintf("mode %#o", st.Mode&unix.S_IFMT)
			}
			out[fd] = desc
		}
	}
	return out
}

// fdDiff describes the fds in now that were not in base, and the ones
// that went away.
func fdDiff(base, now map[int]string) string {
	var lines []string
	for fd, d := range now {
		if b, ok := base[fd]; !ok || b != d {
			lines = append(lines, fmt.Sprintf("leaked fd %d (%s)", fd, d))
		}
	}
	for fd, d := range base {
		if _, ok := now[fd]; !ok {
			lines = append(lines, fmt.Sprintf("closed fd %d (%s) that the suite did not open", fd, d))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// checkFDs fails the test if the open fds differ from base. Sockets that
// were just closed are gone from the table at once, so no wait is needed.
func checkFDs(t testing.TB, base map[int]string) {
	t.Helper()
	if d := fdDiff(base, openFDs()); d != "" {
		t.Fatalf("conformance: descriptors leaked or lost:\n%s", d)
	}
}

// checkGoroutines waits until the number of goroutines is back to base.
// It waits for a condition; it asserts nothing about how long that took.
func checkGoroutines(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("conformance: %d goroutines, want at most %d as before:\n%s", runtime.NumGoroutine(), base, buf)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readFull reads exactly n bytes from c, with the hang guard as deadline.
func readFull(t testing.TB, c net.Conn, n int) []byte {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(hang)))
	p := make([]byte, n)
	_, err := io.ReadFull(c, p)
	require.NoError(t, err, "reading %d bytes from the peer", n)
	return p
}

// write writes p to c, with the hang guard as deadline.
func write(t testing.TB, c net.Conn, p []byte) {
	t.Helper()
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(hang)))
	_, err := c.Write(p)
	require.NoError(t, err)
}

// expectEOF waits for c to report end of stream (or a reset) with nothing
// read before it.
func expectEOF(t testing.TB, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(hang)))
	var b [1]byte
	n, err := c.Read(b[:])
	require.Zero(t, n, "unexpected byte from a closed connection")
	require.Error(t, err)
	require.NotErrorIs(t, err, os.ErrDeadlineExceeded, "the connection was not closed")
}

// expectOrderlyEOF waits for c to report an orderly end of stream (the
// peer's FIN) with nothing read before it: not a reset, not the hang guard.
func expectOrderlyEOF(t testing.TB, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(hang)))
	var b [1]byte
	n, err := c.Read(b[:])
	require.Zero(t, n, "unexpected byte after the end of the stream")
	require.ErrorIs(t, err, io.EOF)
}

func timeAfterHang() <-chan time.Time { return time.After(hang) }

func closeFD(fd int) error { return unix.Close(fd) }

// stopTimer stops tm on the test's goroutine, which must own its thread,
// and reports whether it was pending.
func stopTimer(t testing.TB, tm *core.Timer) bool {
	t.Helper()
	was, err := tm.Stop()
	require.NoError(t, err)
	return was
}
