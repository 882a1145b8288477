package app

import (
	"context"
	"sync"
	"time"
)

// loop is a component that runs a sweep (the event relay, the reconciler,
// the orphan-blob sweep) first after delay, then every interval, until Stop.
// A run in progress when Stop is called gets its ctx cancelled, and Stop
// waits for it to return.
type loop struct {
	delay, every time.Duration
	run          func(ctx context.Context)

	once   sync.Once
	cancel context.CancelFunc
	done   chan struct{}
}

func newLoop(delay, every time.Duration, run func(ctx context.Context)) *loop {
	return &loop{delay: delay, every: every, run: run, done: make(chan struct{})}
}

// Start starts the loop in its own goroutine.
func (l *loop) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go func() {
		defer close(l.done)
		wait := l.delay
		for {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			l.run(ctx)
			wait = l.every
		}
	}()
}

// Stop ends the loop and waits for a run in progress. It is idempotent and
// safe without Start.
func (l *loop) Stop() {
	l.once.Do(func() {
		if l.cancel == nil {
			close(l.done)
			return
		}
		l.cancel()
	})
	<-l.done
}
