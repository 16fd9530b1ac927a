//go:build unix && !linux

package main

import (
	"context"
	"errors"
)

var errNoUring = errors.New("io_uring is Linux only")

func uringProbe() (string, error) { return "", errNoUring }

// uringLoad is not available here; startUringLoad always fails.
type uringLoad struct{ stats string }

func uringWait(conns int) int { return 1 }

func startUringLoad(ctx context.Context, addr string, n, size, wait int) (*uringLoad, error) {
	return nil, errNoUring
}

func (*uringLoad) total() uint64 { return 0 }
func (*uringLoad) Err() error    { return errNoUring }
func (*uringLoad) close() int    { return 0 }
func (*uringLoad) pause() error  { return errNoUring }
func (*uringLoad) resume()       {}
