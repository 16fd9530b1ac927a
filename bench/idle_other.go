//go:build unix && !linux

package main

import (
	"context"
	"errors"
)

func idleConnect(ctx context.Context, addr string, n int) ([]int, error) {
	return nil, errors.New("the idle scenario is implemented on Linux only")
}
