//go:build race

package core

import (
	"bytes"
	"runtime"
	"strconv"
)

// exactOwner: race-enabled builds also verify the calling goroutine's
// identity on every loop-only call. Reading it costs ~1.7 µs, too much for
// the hot path of an optimized build, where the state check alone applies.
const exactOwner = true

func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}
