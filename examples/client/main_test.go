//go:build unix

package main

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/plugloop/plugloop/internal/testkit"
	"github.com/stretchr/testify/require"
)

// Every line of the input reaches the server, one longer than
// bufio.Scanner's 64 KiB limit and a last one without its newline
// included, and everything the server sends back is written out.
func TestSendsEveryLine(t *testing.T) {
	for _, lib := range testkit.Backends(t) { // foreign is not linked in
		t.Run(lib, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			got := make(chan []byte, 1)
			go func() { // an echo server that keeps what it received
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				var rx bytes.Buffer
				io.Copy(io.MultiWriter(c, &rx), c) // until the client's half-close
				c.Close()
				got <- rx.Bytes()
			}()

			long := strings.Repeat("z", 100_000)
			in := "first\r\n" + long + "\nlast"
			var out bytes.Buffer
			err = run(lib, ln.Addr().String(), 5*time.Second, 0, strings.NewReader(in), &out)
			require.NoError(t, err)
			want := "first\r\n" + long + "\nlast\n"
			require.Equal(t, want, string(<-got), "what the server received")
			require.Equal(t, want, out.String(), "what the client printed")
		})
	}
}
