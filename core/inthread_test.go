//go:build unix

package core

import "testing"

func deep(n int, f func() bool) bool {
	if n == 0 {
		return f()
	}
	return deep(n-1, f)
}

// probe stands for a Thread method under which user code calls f from n
// frames down.
func (t *Thread) probe(n int) bool { return deep(n, inThreadCode) }

// inThreadCode finds a Thread method however deep the callback's own calls
// go, and none where there is none.
func TestInThreadCode(t *testing.T) {
	th := &Thread{}
	for _, n := range []int{0, 10, 100, 300} {
		if !th.probe(n) {
			t.Errorf("under a Thread method, %d frames down: not seen", n)
		}
	}
	if deep(100, inThreadCode) {
		t.Error("seen with no Thread method on the stack")
	}
}
