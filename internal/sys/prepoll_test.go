package sys

import "testing"

func TestPrepoll(t *testing.T) {
	var p Prepoll
	if p.Look(true) {
		t.Fatal("no look before any batch")
	}
	p.Waited(5)
	if !p.Look(true) || p.Look(false) {
		t.Fatal("look after a batch, only when the caller may block")
	}
	p.Looked(0)
	p.Waited(1)
	if p.Look(true) {
		t.Fatal("an empty look turns looking off until a wait returns several events")
	}
	p.Waited(3)
	if !p.Look(true) {
		t.Fatal("several events turn looking back on")
	}
	p.Looked(2)
	if !p.Look(true) {
		t.Fatal("a fruitful look keeps looking on")
	}
	p.Waited(0)
	if p.Look(true) {
		t.Fatal("an empty wait is no batch")
	}
}
