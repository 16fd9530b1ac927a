// Package goid tells goroutines apart, for the checks that a callback or a
// loop-only call runs on the goroutine it should.
//
// Token is the cheap one, for every loop-only call: on amd64 and arm64 it
// reads the address of the runtime's descriptor of the calling goroutine
// (Fast), elsewhere it falls back to ID. ID parses runtime.Stack (about
// 1.7 µs): the goroutine's number, for tests and logs.
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
