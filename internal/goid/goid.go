// Package goid reads the calling goroutine's id, for the checks that a
// callback or a loop-only call runs on the goroutine it should. It parses
// runtime.Stack (about 1.7 µs), so it is for race builds and tests, never
// an optimized build's hot path.
package goid

import (
	"bytes"
	"runtime"
	"strconv"
)

// ID returns the calling goroutine's id.
func ID() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}
