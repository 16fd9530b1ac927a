//go:build unix

package core

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// SystemState is the readiness of the system the context runs in (lws'
// lws_system states). By default the context steps from
// SystemContextCreated to SystemOperational right after creation;
// notifiers can hold a step until asynchronous work — getting the time, a
// policy, credentials — is done.
type SystemState int32

// The system states, in the order the context steps through them.
const (
	SystemContextCreated SystemState = iota
	SystemInitialized
	SystemIfaceColdplug
	SystemDHCP
	SystemCPDPreTime
	SystemTimeValid
	SystemCPDPostTime
	SystemPolicyValid
	SystemRegistered
	SystemAuth1
	SystemAuth2
	SystemOneTimeUpdates
	SystemOperational
	// SystemPolicyInvalid: connections are being dropped because the
	// policy is changing; the system then steps back up from
	// SystemInitialized.
	SystemPolicyInvalid
	// SystemContextDestroying: the context is going down.
	SystemContextDestroying
)

var systemStateNames = [...]string{"CONTEXT_CREATED", "INITIALIZED", "IFACE_COLDPLUG", "DHCP",
	"CPD_PRE_TIME", "TIME_VALID", "CPD_POST_TIME", "POLICY_VALID", "REGISTERED", "AUTH1", "AUTH2",
	"ONE_TIME_UPDATES", "OPERATIONAL", "POLICY_INVALID", "CONTEXT_DESTROYING"}

// String returns the lws-style name, such as "OPERATIONAL".
func (s SystemState) String() string {
	if s >= 0 && int(s) < len(systemStateNames) {
		return systemStateNames[s]
	}
	return fmt.Sprintf("SystemState(%d)", int(s))
}

// Notifier follows the system state and may hold a step. Notify runs on
// service thread 0 before each step from current to next; returning false
// holds the system at current, and whoever holds it calls
// Context.SystemTransition again (from the loop, or through Post) once its
// work is done. Notifiers are asked in registration order; the first false
// stops the asking.
type Notifier struct {
	// Name identifies the notifier to the application; the core does not
	// use it.
	Name string
	// Notify is asked before each step; false holds the system.
	Notify func(ctx *Context, current, next SystemState) bool
}

// system is the context's state machine and attach queue.
type system struct {
	state     atomic.Int32
	target    SystemState
	notifiers []Notifier

	mu       sync.Mutex
	attached []attachItem // guarded by mu
	pending  atomic.Int32 // len(attached), read without the lock

	blobMu sync.Mutex
	blobs  map[blobKey]*Blob
}

type attachItem struct {
	thread int
	state  SystemState
	fn     func()
}

// SystemState returns the current system state. Any goroutine may call it.
func (c *Context) SystemState() SystemState { return SystemState(c.sys.state.Load()) }

// RegisterNotifier adds a notifier after creation (Info.Notifiers adds them
// before the first step). Loop-only.
func (c *Context) RegisterNotifier(n Notifier) error {
	if n.Notify == nil {
		return fmt.Errorf("%w: notifier %q has no Notify", ErrInvalid, n.Name)
	}
	t := c.threads[0]
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	c.sys.notifiers = append(c.sys.notifiers, n)
	return nil
}

// SystemTransition steps the system state towards target, one state at a
// time, asking the notifiers before each step; it stops where one holds.
// Stepping from SystemOperational to SystemPolicyInvalid and from there
// back to SystemInitialized are single steps; any other target behind the
// current state changes nothing (nil). SystemContextDestroying is
// Destroy's to enter: as a target it is ErrInvalid, as is a state no
// constant names. Loop-only (thread 0).
func (c *Context) SystemTransition(target SystemState) error {
	if target < 0 || target >= SystemContextDestroying {
		return fmt.Errorf("%w: SystemTransition to %v", ErrInvalid, target)
	}
	t := c.threads[0]
	took, err := t.own()
	if err != nil {
		return err
	}
	defer t.release(took)
	c.sys.target = target
	c.stepSystem()
	return nil
}

func (c *Context) stepSystem() {
	s := &c.sys
	for {
		cur := SystemState(s.state.Load())
		if cur == s.target {
			break
		}
		next := cur + 1
		switch {
		case s.target == SystemPolicyInvalid:
			next = s.target
		case cur == SystemPolicyInvalid:
			next = SystemInitialized
		case s.target < cur:
			return // the states only step forward, apart from the cases above
		}
		for _, n := range s.notifiers {
			if !n.Notify(c, cur, next) {
				return
			}
		}
		s.state.Store(int32(next))
		for _, t := range c.threads {
			if s.pending.Load() > 0 {
				t.wake()
			}
		}
	}
}

// Attach runs fn once on service thread i, on its goroutine, as soon as the
// system state has reached state (lws_system attach). Any goroutine may call
// it, and need not live until fn runs. Items whose state is reached run in
// the order they were attached. fn does not run if the context is destroyed
// first; after destruction Attach returns ErrDestroyed. A thread index out
// of range, a state no constant names or a nil fn is ErrInvalid.
func (c *Context) Attach(i int, state SystemState, fn func()) error {
	t := c.Thread(i)
	if t == nil || fn == nil || state < 0 || int(state) >= len(systemStateNames) {
		return fmt.Errorf("%w: Attach(%d, %v, fn nil: %t)", ErrInvalid, i, state, fn == nil)
	}
	if c.destroyReq.Load() || t.mode.Load() == modeDead {
		return ErrDestroyed
	}
	c.sys.mu.Lock()
	c.sys.attached = append(c.sys.attached, attachItem{thread: i, state: state, fn: fn})
	c.sys.pending.Add(1)
	c.sys.mu.Unlock()
	return t.wake()
}

// runAttached runs the attached functions for t whose state is reached.
func (t *Thread) runAttached() {
	s := &t.ctx.sys
	if s.pending.Load() == 0 {
		return
	}
	cur := SystemState(s.state.Load())
	var due []func()
	s.mu.Lock()
	keep := s.attached[:0]
	for _, it := range s.attached {
		if it.thread == t.index && cur >= it.state {
			due = append(due, it.fn)
			continue
		}
		keep = append(keep, it)
	}
	clear(s.attached[len(keep):])
	s.attached = keep
	s.pending.Store(int32(len(keep)))
	s.mu.Unlock()
	for _, fn := range due {
		if t.dying() {
			return
		}
		t.depth++
		fn()
		t.depth--
		t.endCallback()
	}
}

// BlobKind names a system blob (lws_system_blob_item_t).
type BlobKind int

// The kinds of system blob.
const (
	BlobAuth BlobKind = iota // index 0: registration token, 1: access token
	BlobClientCertDER
	BlobClientKeyDER
	BlobDeviceSerial
	BlobDeviceFWVersion
	BlobDeviceType
	BlobNTPServer
	BlobMQTTClientID
	BlobMQTTUsername
	BlobMQTTPassword
)

type blobKey struct {
	kind BlobKind
	idx  int
}

// Blob is a system blob: bytes set directly (no copy) or appended in
// chunks (copied), read back whole or from an offset. Any goroutine may use
// it.
type Blob struct {
	mu     sync.Mutex
	direct []byte
	chunks [][]byte
}

// Blob returns the blob of that kind and index, creating it empty.
func (c *Context) Blob(kind BlobKind, idx int) *Blob {
	c.sys.blobMu.Lock()
	defer c.sys.blobMu.Unlock()
	if c.sys.blobs == nil {
		c.sys.blobs = map[blobKey]*Blob{}
	}
	k := blobKey{kind, idx}
	b := c.sys.blobs[k]
	if b == nil {
		b = &Blob{}
		c.sys.blobs[k] = b
	}
	return b
}

// SetDirect makes the blob p itself, replacing what it held. p is not
// copied, so it must not change while the blob refers to it.
func (b *Blob) SetDirect(p []byte) {
	b.mu.Lock()
	b.direct, b.chunks = p, nil
	b.mu.Unlock()
}

// Append copies p onto the end of the blob (a direct blob becomes the first
// chunk).
func (b *Blob) Append(p []byte) {
	b.mu.Lock()
	if b.direct != nil {
		b.chunks = [][]byte{b.direct}
		b.direct = nil
	}
	b.chunks = append(b.chunks, append([]byte(nil), p...))
	b.mu.Unlock()
}

// Reset empties the blob.
func (b *Blob) Reset() { b.SetDirect(nil) }

// Size returns the blob's total length.
func (b *Blob) Size() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.direct)
	for _, c := range b.chunks {
		n += len(c)
	}
	return n
}

// ReadAt copies the blob from offset off into p (io.ReaderAt), the same
// whether it was set directly or appended in chunks.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, ErrInvalid
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	parts := b.chunks
	if b.direct != nil {
		parts = [][]byte{b.direct}
	}
	n := 0
	for _, c := range parts {
		if off >= int64(len(c)) {
			off -= int64(len(c))
			continue
		}
		m := copy(p[n:], c[off:])
		n += m
		off = 0
		if n == len(p) {
			return n, nil
		}
	}
	return n, io.EOF
}
