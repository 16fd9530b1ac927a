//go:build unix

package main

import (
	"net"
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"github.com/stretchr/testify/require"
)

// PLUGLOOP_EVLIB naming a backend with a loop of its own is refused, not
// serviced between this loop's one-second waits, and nothing listens.
func TestRefusesBackendWithItsOwnLoop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	t.Setenv(evlib.EnvVar, "poll")
	err = run(addr)
	require.ErrorContains(t, err, "PLUGLOOP_EVLIB=poll")
	require.ErrorContains(t, err, "foreign backend")

	// The port is still free: the refusal came before Listen.
	ln, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	require.NoError(t, ln.Close())
}
