//go:build unix && !linux

package main

import "errors"

// startNetpoll: cloudwego/netpoll's native server runs in the bench on
// Linux only.
func startNetpoll(rawWrite bool) (string, error) {
	return "", errors.New("cloudwego/netpoll's native server runs in the bench on Linux only")
}
