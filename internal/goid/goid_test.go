package goid

import (
	"sync"
	"testing"
)

func TestID(t *testing.T) {
	me := ID()
	if me == 0 {
		t.Fatal("ID() = 0")
	}
	other := make(chan uint64)
	go func() { other <- ID() }()
	if o := <-other; o == me || o == 0 {
		t.Fatalf("another goroutine's ID() = %d, mine %d", o, me)
	}
	if again := ID(); again != me {
		t.Fatalf("ID() changed: %d then %d", me, again)
	}
}

// Token tells apart every goroutine alive at once, and stays put for each
// while it lives: through stack growth (which moves the stack, not the
// goroutine) and after blocking, which may move it to another thread.
func TestToken(t *testing.T) {
	const n = 64
	tokens := make([]uint64, n)
	var started, release sync.WaitGroup
	started.Add(n)
	release.Add(1)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			tokens[i] = Token()
			started.Done()
			release.Wait()
			if got := grow(200); got != tokens[i] {
				t.Errorf("goroutine %d: Token %#x after its stack grew, %#x before", i, got, tokens[i])
			}
		})
	}
	started.Wait()
	seen := map[uint64]int{Token(): -1}
	for i, tok := range tokens {
		if tok == 0 {
			t.Fatalf("goroutine %d: Token 0", i)
		}
		if j, dup := seen[tok]; dup {
			t.Fatalf("goroutines %d and %d, alive at once, share Token %#x", i, j, tok)
		}
		seen[tok] = i
	}
	release.Done()
	wg.Wait()
}

// grow calls itself n deep with a frame big enough to make the runtime
// move the stack, then returns Token from the bottom.
func grow(n int) uint64 {
	var pad [256]byte
	if n == 0 {
		return Token() + uint64(pad[0])
	}
	return grow(n-1) + uint64(pad[n%len(pad)])
}

func BenchmarkToken(b *testing.B) {
	for b.Loop() {
		Token()
	}
}

func BenchmarkID(b *testing.B) {
	for b.Loop() {
		ID()
	}
}
