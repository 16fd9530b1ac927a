//go:build unix

package testkit

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// TCPPair returns the two ends of a connection on loopback: the accepted
// one and the dialled one. Both close when the test ends.
func TCPPair(t testing.TB) (srv, cli net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	cli, err = net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	srv, err = ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { srv.Close() })
	return srv, cli
}
