//go:build unix

// Package exampleloop runs a context for the examples whose subject is a
// protocol, not how a loop is run (examples/echo and examples/extpoll show
// that): on a goroutine of its own, by Context.Run or, when the foreign
// backend is chosen, by the program's own unix.Poll loop (foreign.PollSet).
package exampleloop

import (
	"context"
	"errors"
	"os"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
)

// PollSet returns the set that hosts the context in the program's own loop
// when the backend named (or PLUGLOOP_EVLIB) is foreign, else nil. Its
// Protocol must wrap the context's first protocol.
func PollSet(name string) *foreign.PollSet {
	if name == foreign.Name || os.Getenv(evlib.EnvVar) == foreign.Name {
		return new(foreign.PollSet)
	}
	return nil
}

// Loop is a context being serviced on a goroutine of its own.
type Loop struct {
	ctx  *core.Context
	done chan error // the loop's result
}

// Start services ctx until Stop: through set, the program's own loop, when
// the context's backend is app-driven, else with Context.Run.
func Start(ctx *core.Context, set *foreign.PollSet) *Loop {
	l := &Loop{ctx: ctx, done: make(chan error, 1)}
	if ctx.Caps()&evlib.CapAppDriven == 0 {
		set = nil // PLUGLOOP_EVLIB chose a backend with a loop of its own
	}
	go func() {
		if set == nil {
			l.done <- ctx.Run(context.Background())
			return
		}
		// The application's own loop; Destroy ends its Poll.
		for {
			if err := set.Poll(ctx.Thread(0), nil, -1); err != nil {
				l.done <- err
				return
			}
		}
	}()
	return l
}

// Stop destroys the context and waits for the loop to end. It returns the
// loop's error, if it ended with one but ErrDestroyed.
func (l *Loop) Stop() error {
	l.ctx.Destroy()
	<-l.ctx.Done()
	if err := <-l.done; !errors.Is(err, core.ErrDestroyed) {
		return err
	}
	return nil
}
