//go:build unix && !linux

package main

import (
	"net"
	"time"
)

// churnDialer is churn client i's dialer. Other systems do not answer for
// all of 127.0.0.0/8, so every client connects from the same address.
func churnDialer(string, int) net.Dialer { return net.Dialer{Timeout: 5 * time.Second} }
