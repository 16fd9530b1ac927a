//go:build unix

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
)

// hang bounds every wait for the server, so that a bug fails the test
// instead of hanging it; nothing waits for time to pass.
const hang = 20 * time.Second

func TestHTTPD(t *testing.T) {
	// What stays for good once used — the Go runtime's poller, netpoll's
	// pollers — comes before the baselines: one request on each backend.
	libs := testkit.Backends(t)
	for _, lib := range libs {
		srv, err := start(config{evlib: lib, addr: "127.0.0.1:0", maxHeader: 1 << 10, maxQueued: 8})
		require.NoError(t, err)
		c, br := dial(t, srv)
		write(t, c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		readResponse(t, br)
		expectEOF(t, br)
		c.Close()
		require.NoError(t, srv.close())
	}
	for _, lib := range libs {
		t.Run(lib, func(t *testing.T) {
			noLeaks := testkit.Baseline(t, hang)
			srv, err := start(config{evlib: lib, addr: "127.0.0.1:0", maxHeader: 1 << 10, maxQueued: 8, idle: time.Minute})
			require.NoError(t, err)
			require.Equal(t, lib, srv.ctx.EventLib())
			t.Run("KeepAlive", func(t *testing.T) { testKeepAlive(t, srv) })
			t.Run("ConnectionClose", func(t *testing.T) { testConnectionClose(t, srv) })
			t.Run("Pipelining", func(t *testing.T) { testPipelining(t, srv) })
			t.Run("SlowReader", func(t *testing.T) { testSlowReader(t, srv) })
			t.Run("HalfClose", func(t *testing.T) { testHalfClose(t, srv) })
			t.Run("OversizedHeaders", func(t *testing.T) { testOversized(t, srv) })
			t.Run("BadRequests", func(t *testing.T) { testBadRequests(t, srv) })
			t.Run("HTTP10", func(t *testing.T) { testHTTP10(t, srv) })
			t.Run("Head", func(t *testing.T) { testHead(t, srv) })
			t.Run("LineEnds", func(t *testing.T) { testLineEnds(t, srv) })
			require.Zero(t, srv.stats().RxWhilePaused, "RAW_RX after the server paused rx")
			require.NoError(t, srv.close())

			t.Run("IdleTimeout", func(t *testing.T) { testIdle(t, lib) })
			t.Run("HeadTimeout", func(t *testing.T) { testHeadTimeout(t, lib) })

			noLeaks()
		})
	}
}

// A client's connection is reused for every request, and each gets the body.
func testKeepAlive(t *testing.T, srv *server) {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: hang}
	var conns int
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if !i.Reused {
			conns++
		}
	}}
	for i := range 20 {
		path := "/"
		if i%5 == 4 {
			path = "/nothing-here" // a 404 keeps the connection too
		}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+srv.addr()+path, nil)
		require.NoError(t, err)
		resp, err := client.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		if path == "/" {
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, "hello\n", string(body))
		} else {
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
		}
		require.False(t, resp.Close, "the server must keep the connection")
		date, err := http.ParseTime(resp.Header.Get("Date"))
		require.NoError(t, err, "every response has a Date header")
		require.WithinDuration(t, time.Now(), date, time.Hour, "the Date header says now")
	}
	require.Equal(t, 1, conns, "every request after the first reuses the connection")
}

// "Connection: close" gets its response, marked so, and then end of stream:
// a request pipelined behind it is not answered.
func testConnectionClose(t *testing.T, srv *server) {
	client := &http.Client{Transport: &http.Transport{}, Timeout: hang}
	req, err := http.NewRequest("GET", "http://"+srv.addr()+"/", nil)
	require.NoError(t, err)
	req.Close = true
	resp, err := client.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, "hello\n", string(body))
	require.True(t, resp.Close, "the response says Connection: close")

	c, br := dial(t, srv)
	write(t, c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp = readResponse(t, br)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, resp.Close)
	expectEOF(t, br)
}

// Fifty requests in one write get fifty responses, in order.
func testPipelining(t *testing.T, srv *server) {
	const n = 50
	c, br := dial(t, srv)
	var reqs strings.Builder
	for i := range n {
		fmt.Fprintf(&reqs, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", pathFor(i))
	}
	write(t, c, reqs.String())
	for i := range n {
		resp := readResponse(t, br)
		want := http.StatusOK
		if pathFor(i) != "/" {
			want = http.StatusNotFound
		}
		require.Equal(t, want, resp.StatusCode, "response %d of %d", i, n)
	}
	write(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.Equal(t, http.StatusOK, readResponse(t, br).StatusCode, "the connection stays usable")
}

// pathFor is the target of request i: a pattern of / and a 404, so that
// the statuses show the order of the responses.
func pathFor(i int) string {
	if i%3 == 1 || i%7 == 0 {
		return fmt.Sprintf("/missing/%d", i)
	}
	return "/"
}

// A client that pipelines requests and reads nothing makes the server stop
// reading: it pauses rx with at most maxQueued responses waiting, and TCP
// pushes back on the client. Once the client reads, everything is answered.
func testSlowReader(t *testing.T, srv *server) {
	before := srv.stats()
	// A small receive window: the server's output backs up sooner.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", srv.addr())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(hang)))

	// The writer goes on until the server has paused this connection's
	// rx (its writes then block until the reading below starts), then
	// ends with a request that closes the connection.
	req := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	batch := []byte(strings.Repeat(string(req), 100))
	var sent atomic.Int64
	werr := make(chan error, 1)
	go func() {
		for srv.stats().Pauses == before.Pauses {
			if _, err := c.Write(batch); err != nil {
				werr <- err
				return
			}
			sent.Add(100)
		}
		_, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
		sent.Add(1)
		werr <- err
	}()
	waitFor(t, "the server to pause the slow reader's rx", func() bool { return srv.stats().Pauses > before.Pauses })

	br := bufio.NewReader(c)
	var got int64
	for {
		resp, err := http.ReadResponse(br, nil)
		if err == io.EOF {
			break
		}
		require.NoError(t, err, "after %d responses", got)
		if got%1000 == 0 {
			// A hang guard on progress: how much the writer sent before
			// the pause depends on the backend (netpoll reads ahead), so
			// the whole exchange may take long on a busy machine.
			require.NoError(t, c.SetDeadline(time.Now().Add(hang)))
		}
		_, err = io.Copy(io.Discard, resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		got++
		if resp.Close {
			break
		}
	}
	require.NoError(t, <-werr)
	require.Equal(t, sent.Load(), got, "one response per request")
	expectEOF(t, br)

	s := srv.stats()
	require.LessOrEqual(t, s.MaxQueued, int64(srv.cfg.maxQueued), "responses waiting on one connection")
	require.LessOrEqual(t, s.MaxInput, int64(srv.cfg.maxHeader+rxChunk), "unparsed input held for one connection")
	require.Zero(t, s.RxWhilePaused)
	t.Logf("%d requests, %d pauses", got, s.Pauses-before.Pauses)
}

// A client that sends its requests and then shuts its write side down (as
// "nc -N" does) still gets every response, then end of stream: its end of
// input is not the end of its reading.
func testHalfClose(t *testing.T, srv *server) {
	const n = 1000 // well beyond maxQueued: the server pauses on the way
	c, br := dial(t, srv)
	write(t, c, strings.Repeat("GET / HTTP/1.1\r\nHost: x\r\n\r\n", n))
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	for i := range n {
		require.Equal(t, http.StatusOK, readResponse(t, br).StatusCode, "response %d of %d", i, n)
	}
	expectEOF(t, br)
}

// A request head beyond maxheader gets 431 and the connection closes,
// whether the head ends or never does.
func testOversized(t *testing.T, srv *server) {
	big := strings.Repeat("a", 2*srv.cfg.maxHeader)
	client := &http.Client{Transport: &http.Transport{}, Timeout: hang}
	req, err := http.NewRequest("GET", "http://"+srv.addr()+"/", nil)
	require.NoError(t, err)
	req.Header.Set("X-Big", big)
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	require.True(t, resp.Close)

	c, br := dial(t, srv)
	write(t, c, "GET / HTTP/1.1\r\nX-Big: "+big) // no end of head
	resp = readResponse(t, br)
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	expectEOF(t, br)
}

// Requests the server cannot serve get an error status and end the
// connection; what was pipelined before them is answered first.
func testBadRequests(t *testing.T, srv *server) {
	for _, tc := range []struct {
		req  string
		code int
	}{
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", http.StatusMethodNotAllowed},
		{"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", http.StatusNotImplemented},
		{"GET /\r\n\r\n", http.StatusBadRequest},
		{"GET / HTTP/1.1\r\nno colon\r\n\r\n", http.StatusBadRequest},
		// Whitespace before the colon is an error (RFC 9112 5.1): taken
		// for no Content-Length, the body would pass for a request.
		{"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 24\r\n\r\nGET /x HTTP/1.1\r\nA: b\r\n\r\n", http.StatusBadRequest},
		{"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding\t: chunked\r\n\r\n", http.StatusBadRequest},
		{"GET / HTTP/1.1\r\n : x\r\n\r\n", http.StatusBadRequest},
		{"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", http.StatusBadRequest},
		// The request line is three parts, and the version HTTP/1.digit.
		{"GET / HTTP/1.1 extra\r\n\r\n", http.StatusBadRequest},
		{"GET / HTTP/1.\r\n\r\n", http.StatusBadRequest},
		{"GET / HTTP/1.10\r\n\r\n", http.StatusBadRequest},
		{"G(T / HTTP/1.1\r\n\r\n", http.StatusBadRequest},
	} {
		c, br := dial(t, srv)
		write(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"+tc.req)
		require.Equal(t, http.StatusOK, readResponse(t, br).StatusCode)
		resp := readResponse(t, br)
		require.Equal(t, tc.code, resp.StatusCode, "%q", tc.req)
		require.True(t, resp.Close)
		expectEOF(t, br)
	}
}

// Lines may end in a bare LF, and empty lines before a request line are
// ignored (RFC 9112 2.2); a CR that ends no line is a 400. Each request
// here is answered on one connection, which stays open until the last.
func testLineEnds(t *testing.T, srv *server) {
	c, br := dial(t, srv)
	for _, req := range []string{
		"GET / HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\n\r\n",
		"GET / HTTP/1.1\nHost: x\r\n\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		write(t, c, req)
		resp := readResponse(t, br)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%q", req)
		require.False(t, resp.Close, "%q", req)
	}
	write(t, c, "GET / HTTP/1.1\r\nHost: x\rEvil: y\r\n\r\n")
	resp := readResponse(t, br)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "a bare CR")
	require.True(t, resp.Close)
	expectEOF(t, br)
}

// HEAD gets GET's header fields and no body: the response after it, on
// the same connection, starts right after its header.
func testHead(t *testing.T, srv *server) {
	c, br := dial(t, srv)
	write(t, c, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	for _, want := range []struct {
		code   int
		length string
	}{{http.StatusOK, "6"}, {http.StatusNotFound, "10"}} {
		resp, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
		require.NoError(t, err)
		require.Equal(t, want.code, resp.StatusCode)
		require.Equal(t, want.length, resp.Header.Get("Content-Length"), "GET's length")
		require.False(t, resp.Close)
	}
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, "hello\n", string(body), "no body came before it")
	expectEOF(t, br)
}

// HTTP/1.0 keeps a connection only when the request asks (ab -k), and the
// response then says so; "close" wins over "keep-alive".
func testHTTP10(t *testing.T, srv *server) {
	c, br := dial(t, srv)
	write(t, c, "GET / HTTP/1.0\r\n\r\n")
	resp := readResponse(t, br)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	expectEOF(t, br)

	c, br = dial(t, srv)
	write(t, c, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET /nope HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	for _, code := range []int{http.StatusOK, http.StatusNotFound} {
		resp = readResponse(t, br)
		require.Equal(t, code, resp.StatusCode)
		require.Equal(t, "keep-alive", resp.Header.Get("Connection"))
		require.False(t, resp.Close)
	}
	write(t, c, "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
	resp = readResponse(t, br)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, resp.Close)
	expectEOF(t, br)
}

// A connection that stays silent, before its first request or after one,
// is closed by the core's idle timeout.
func testIdle(t *testing.T, lib string) {
	srv, err := start(config{evlib: lib, addr: "127.0.0.1:0", maxHeader: 1 << 10, maxQueued: 8, idle: 20 * time.Millisecond})
	require.NoError(t, err)
	defer func() { require.NoError(t, srv.close()) }()
	_, sbr := dial(t, srv)
	served, br := dial(t, srv)
	write(t, served, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.Equal(t, http.StatusOK, readResponse(t, br).StatusCode)
	expectEOF(t, sbr)
	expectEOF(t, br)
	waitFor(t, "both closes counted", func() bool { return srv.stats().IdleClosed == 2 })
}

// A client that trickles a request head, one byte at a time, keeps the
// idle timer from ever expiring; the head timeout closes it anyway. Between
// requests of a kept-alive connection no head is due, so a pause longer than
// the head timeout does not close it.
func testHeadTimeout(t *testing.T, lib string) {
	const headTimeout = 50 * time.Millisecond
	srv, err := start(config{evlib: lib, addr: "127.0.0.1:0", maxHeader: 1 << 10, maxQueued: 8, idle: time.Hour, headerTimeout: headTimeout})
	require.NoError(t, err)
	defer func() { require.NoError(t, srv.close()) }()

	kept, kbr := dial(t, srv)
	write(t, kept, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.Equal(t, http.StatusOK, readResponse(t, kbr).StatusCode)

	slow, sbr := dial(t, srv)
	write(t, slow, "GET / HTTP/1.1\r\nX-Slow: ")
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				if _, err := slow.Write([]byte("a")); err != nil {
					return // closed by the server
				}
			}
		}
	}()
	b, err := io.ReadAll(sbr)
	close(stop)
	<-trickled
	if err != nil {
		// The server read every byte it was sent, but one may arrive
		// after its last read: then the kernel answers it with a reset.
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}
	require.Empty(t, string(b), "no response to a head that never ended")
	waitFor(t, "the head timeout's close counted", func() bool { return srv.stats().HeadTimedOut == 1 })

	time.Sleep(3 * headTimeout) // longer than a head may take: none is due
	write(t, kept, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.Equal(t, http.StatusOK, readResponse(t, kbr).StatusCode)
	s := srv.stats()
	require.Equal(t, uint64(1), s.HeadTimedOut)
	require.Zero(t, s.IdleClosed)
}

func dial(t *testing.T, srv *server) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", srv.addr())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(hang)))
	return c, bufio.NewReader(c)
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	_, err := io.WriteString(c, s)
	require.NoError(t, err)
}

func readResponse(t *testing.T, br *bufio.Reader) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

// expectEOF checks that the server ended the stream with nothing more.
func expectEOF(t *testing.T, br *bufio.Reader) {
	t.Helper()
	b, err := io.ReadAll(br)
	require.NoError(t, err, "the server closes the connection (a reset here means it dropped unread input)")
	require.Empty(t, string(b))
}

// waitFor waits for cond, bounded by hang; it asserts nothing about time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, hang, what, cond)
}
