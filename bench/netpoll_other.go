//go:build unix && !linux

package main

import "errors"

// startNetpoll: cloudwego/netpoll's native server runs in the bench on
// Linux only.
func startNetpoll() (string, error) {
	return "", errors.New("cloudwego/netpoll's native server runs in the bench on Linux only")
}
