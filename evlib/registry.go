package evlib

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
)

// EnvVar names the environment variable that overrides the program's choice
// of backend, the way LIBEV_FLAGS does for libev: PLUGLOOP_EVLIB=poll runs
// any plugloop program on the poll backend. An unknown or unavailable name is
// an error, never silently ignored.
const EnvVar = "PLUGLOOP_EVLIB"

// Flag selects a backend in an option bit set (lws' LWS_SERVER_OPTION_LIBUV
// and friends). Each built-in backend name has one flag.
type Flag uint64

// The option flags of the backends plugloop knows by name.
const (
	FlagPoll Flag = 1 << iota
	FlagEpoll
	FlagKqueue
	FlagGnet
	FlagNetpoll
	FlagForeign

	// FlagMask covers every backend flag.
	FlagMask = FlagPoll | FlagEpoll | FlagKqueue | FlagGnet | FlagNetpoll | FlagForeign
)

// Caps are the capabilities a backend declares. The conformance suite checks
// each declaration against behaviour.
type Caps uint32

const (
	// CapReadiness: reports kernel readiness; the core does its own I/O.
	CapReadiness Caps = 1 << iota
	// CapBufferedRx: the backend reads for the core and implements IO.
	CapBufferedRx
	// CapRxBackpressure: dropping Readable interest stops reading from the
	// kernel, so a paused connection pushes back on its peer. Buffered-rx
	// backends that keep reading into their own buffer lack it.
	CapRxBackpressure
	// CapForeignLoop: can attach to a loop the application owns, passed as
	// Config.Foreign.
	CapForeignLoop
	// CapAppDriven: never waits; the application's loop drives the core.
	CapAppDriven
	// CapFiles: can watch pipes, FIFOs and ttys (KindFile).
	CapFiles
	// CapOwnWaker: implements Waker instead of using the core's wake fd.
	CapOwnWaker
	// CapLibraryGoroutines: may report from its event library's goroutines
	// while the service goroutine waits (see the package documentation),
	// so the core's callbacks may run there: one at a time per service
	// thread and in order, but not always on the goroutine in Run.
	CapLibraryGoroutines
	// CapHangupWithoutInterest: a stream socket watched with interest 0
	// (Add or Modify with no events) stays watched for its end: a reset or
	// a pending error is reported as Hangup and/or Error, as poll(2) and
	// epoll report POLLHUP and POLLERR whatever the events asked for, while
	// the peer's orderly end alone (its FIN, with the local write side
	// open) reports nothing and costs no wakeup (a buffered-rx backend,
	// which learns of the end by reading, may report it once). The core
	// keeps a half-open connection (core.Protocol.AllowHalfOpen) watched
	// so, and closes it as soon as its peer resets it. Without it a
	// backend reports nothing for an fd with interest 0 (gnet's poller,
	// kqueue, which have no registration without a filter), and such a
	// connection is out of the backend until the application writes, or
	// its timeouts end it.
	CapHangupWithoutInterest
	// CapUnixReset: a unix-domain stream reset by its peer (on Linux, one
	// whose peer closed with input unread) ends with the reset's error,
	// ECONNRESET, as read(2) returns it; backends whose core reads its own
	// sockets have it. Without it such a stream ends as if the peer had
	// closed in order (io.EOF): cloudwego/netpoll's reads take the error
	// and keep it, and a unix socket keeps nothing of it to ask later (a
	// TCP reset is told by the socket's state and counters).
	CapUnixReset
)

// String lists the capabilities by name.
func (c Caps) String() string {
	names := []string{"readiness", "buffered-rx", "rx-backpressure", "foreign-loop", "app-driven", "files", "own-waker", "library-goroutines", "hangup-without-interest", "unix-reset"}
	var out []string
	for i, n := range names {
		if c&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if rest := c >> len(names); rest != 0 {
		out = append(out, fmt.Sprintf("%#x", uint64(c&^(1<<len(names)-1))))
	}
	return strings.Join(out, ",")
}

// Descriptor is a backend as the registry knows it: a name, an option flag,
// declared capabilities and a constructor (libevent's eventop).
type Descriptor struct {
	// Name is what users type: in code, in PLUGLOOP_EVLIB, on command lines.
	Name string
	// Flag is the option bit that selects it; 0 for third-party backends
	// that are selected by name only.
	Flag Flag
	// Caps are the declared capabilities.
	Caps Caps
	// Priority orders the default choice: the available backend with the
	// highest priority is used when the program names none. plugloop's own
	// use 1 to 20 (epoll 20, poll 10); a third-party backend that is not
	// meant to become the default of every program that links it uses 0
	// or less.
	Priority int
	// DupsPerFD is how many descriptors the backend holds for each fd it
	// watches, beyond the fd itself: 1 for a backend that watches a dup
	// (netpoll closes the fds it is given). The core shares the process'
	// fd limit out accordingly, so that accept stops at the limit instead
	// of failing past it.
	DupsPerFD int
	// Unavailable, if not nil, tells why the backend cannot run in this
	// process (wrong OS, missing kernel feature). nil means available.
	Unavailable error
	// New creates the backend for one service thread.
	New func(Config) (Backend, error)
}

// Available reports whether the backend can run here.
func (d Descriptor) Available() bool { return d.Unavailable == nil && d.New != nil }

var (
	mu       sync.RWMutex
	registry = map[string]Descriptor{}
)

// builtin names the backends plugloop ships, with the package a program
// imports to link each in, so an error can say what to do.
var builtin = []struct {
	name string
	flag Flag
	pkg  string
}{
	{"poll", FlagPoll, "github.com/plugloop/plugloop/evlib_poll"},
	{"epoll", FlagEpoll, "github.com/plugloop/plugloop/evlib_epoll"},
	{"kqueue", FlagKqueue, "github.com/plugloop/plugloop/evlib_kqueue"},
	{"gnet", FlagGnet, "github.com/plugloop/plugloop/evlib_gnet"},
	{"netpoll", FlagNetpoll, "github.com/plugloop/plugloop/evlib_netpoll"},
	{"foreign", FlagForeign, "github.com/plugloop/plugloop/foreign"},
}

// Register makes a backend selectable. Backend packages call it from init.
// A name may be registered once; a built-in name must carry its own flag,
// and any other backend Flag 0 (it is selected by name).
func Register(d Descriptor) error {
	if d.Name == "" || strings.ContainsAny(d.Name, ", \t\r\n") {
		return fmt.Errorf("evlib: invalid backend name %q", d.Name)
	}
	if d.New == nil && d.Unavailable == nil {
		return fmt.Errorf("evlib: backend %q: a descriptor needs New, or Unavailable to say why it has none", d.Name)
	}
	isBuiltin := false
	for _, b := range builtin {
		if b.name == d.Name {
			isBuiltin = true
			if b.flag != d.Flag {
				return fmt.Errorf("evlib: backend %q must use flag %#x", d.Name, b.flag)
			}
		}
	}
	if !isBuiltin && d.Flag != 0 {
		// Every flag Select honours is a built-in backend's.
		return fmt.Errorf("evlib: backend %q: flag %#x: a backend that is not plugloop's own is selected by name only (Flag 0)", d.Name, d.Flag)
	}
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[d.Name]; dup {
		return fmt.Errorf("evlib: backend %q registered twice", d.Name)
	}
	registry[d.Name] = d
	return nil
}

// Backends returns every registered backend, available or not, sorted by
// name. Built-in backends that are not linked into the program are listed
// too, unavailable, with the package to import.
func Backends() []Descriptor {
	mu.RLock()
	out := make([]Descriptor, 0, len(registry)+len(builtin))
	for _, d := range registry {
		out = append(out, d)
	}
	mu.RUnlock()
	for _, b := range builtin {
		if !slices.ContainsFunc(out, func(d Descriptor) bool { return d.Name == b.name }) {
			out = append(out, Descriptor{Name: b.name, Flag: b.flag,
				Unavailable: fmt.Errorf("not linked into this program (import _ %q)", b.pkg)})
		}
	}
	slices.SortFunc(out, func(a, b Descriptor) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Lookup returns the backend registered under name. An unknown name or a
// backend that cannot run here is an error that lists the available ones.
func Lookup(name string) (Descriptor, error) {
	for _, d := range Backends() {
		if d.Name != name {
			continue
		}
		if !d.Available() {
			return d, fmt.Errorf("%w: %q: %v (available: %s)", ErrUnavailable, name, d.Unavailable, availableList())
		}
		return d, nil
	}
	return Descriptor{}, fmt.Errorf("%w: %q (available: %s)", ErrUnknown, name, availableList())
}

// Select picks the backend for a context. In order: the PLUGLOOP_EVLIB
// environment variable if set; else the name if not empty; else the single
// flag set in flags (more than one is an error); else the available backend
// with the highest Priority. A name and a flag that disagree are an error.
func Select(flags Flag, name string) (Descriptor, error) {
	if env := strings.TrimSpace(os.Getenv(EnvVar)); env != "" {
		d, err := Lookup(env)
		if err != nil {
			return d, fmt.Errorf("%s=%s: %w", EnvVar, env, err)
		}
		return d, nil
	}
	if flags&^FlagMask != 0 {
		return Descriptor{}, fmt.Errorf("%w: flag %#x selects no backend (available: %s)", ErrUnknown, flags&^FlagMask, availableList())
	}
	if flags&(flags-1) != 0 {
		return Descriptor{}, fmt.Errorf("%w: more than one backend flag set (%#x; available: %s)", ErrUnknown, flags, availableList())
	}
	if name == "" && flags != 0 {
		for _, b := range builtin {
			if b.flag == flags {
				name = b.name
			}
		}
	}
	if name != "" {
		d, err := Lookup(name)
		if err == nil && flags != 0 && d.Flag != flags {
			return d, fmt.Errorf("%w: name %q and flag %#x select different backends (available: %s)", ErrUnknown, name, flags, availableList())
		}
		return d, err
	}
	var best *Descriptor
	for _, d := range Backends() {
		if d.Available() && d.Caps&CapAppDriven == 0 && (best == nil || d.Priority > best.Priority) {
			best = &d
		}
	}
	if best == nil {
		return Descriptor{}, fmt.Errorf("%w: no backend is available (known: %s)", ErrUnavailable, names(Backends()))
	}
	return *best, nil
}

func availableList() string {
	var avail []Descriptor
	for _, d := range Backends() {
		if d.Available() {
			avail = append(avail, d)
		}
	}
	if len(avail) == 0 {
		return "none"
	}
	return names(avail)
}

func names(ds []Descriptor) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.Name
	}
	return strings.Join(s, ", ")
}
