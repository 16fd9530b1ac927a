//go:build unix && (!linux || !(amd64 || arm64 || loong64))

package main

import "errors"

// startNetpoll: cloudwego/netpoll's native server runs in the bench where
// plugloop's adapter does: on Linux, on the architectures netpoll v0.7.2
// builds for.
func startNetpoll(rawWrite bool) (string, error) {
	return "", errors.New("cloudwego/netpoll's native server runs in the bench on linux/amd64, arm64 and loong64 only")
}
