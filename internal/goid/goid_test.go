package goid

import "testing"

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
