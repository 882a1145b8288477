package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// ErrInvalidMessage is returned by Publish for a message without a user id or
// an event name, or whose data is not valid JSON.
var ErrInvalidMessage = errors.New("realtime: invalid message")

// Message is one event for one user, as it travels between processes.
type Message struct {
	// UserID is the JWT subject whose sockets receive the event (the
	// contract's room "user:<UserID>").
	UserID string `json:"userId"`
	// Event is the Socket.IO event name, e.g. "asset_processed".
	Event string `json:"event"`
	// Data is the event's single argument, already JSON. Empty means the
	// event is sent without an argument.
	Data json.RawMessage `json:"data,omitempty"`
}

// Validate reports whether m can be delivered; the error wraps ErrInvalidMessage.
func (m Message) Validate() error {
	switch {
	case m.UserID == "":
		return fmt.Errorf("%w: empty user id", ErrInvalidMessage)
	case m.Event == "":
		return fmt.Errorf("%w: empty event name", ErrInvalidMessage)
	case len(m.Data) > 0 && !json.Valid(m.Data):
		return fmt.Errorf("%w: data of event %q is not valid JSON", ErrInvalidMessage, m.Event)
	}
	return nil
}

// Bus carries events from the process that decides them (a worker) to every
// process that may hold the user's sockets (every API process).
//
// The contract, which every implementation passes through bustest.TestBus:
//   - Publish validates the message (ErrInvalidMessage) and returns once the
//     bus has taken it; it does not wait for any subscriber to act on it.
//   - Every subscription that is active when Publish is called receives the
//     message exactly once; a subscription made later does not see it. The bus
//     is pub/sub, not a queue: nothing is stored for absent subscribers (the
//     pipeline records the decision to send with the state change, so a lost
//     message is re-sent from there, not from here).
//   - Messages published by one goroutine reach each subscription in the order
//     they were published.
//   - fn may be called from any goroutine, also concurrently with itself; it
//     must not block (a slow fn delays every publisher).
//   - After stop returns, fn is not called again. stop is idempotent and must
//     not be called from inside fn.
//   - Cancelling the ctx given to Subscribe has the same effect as stop.
//   - A subscription may lose its connection to the bus and recover it (a
//     Redis restart, a network cut). Messages published meanwhile are lost
//     to it, and Publish may well have succeeded for them. So onGap (nil:
//     not wanted) is called each time the subscription is active again
//     after such a loss, before fn gets any message published after that
//     point: the subscriber must then make up for what it may have missed
//     from elsewhere (the realtime server has every socket recover from the
//     event log). onGap follows fn's rules: any goroutine, never blocks,
//     never after stop. A bus that cannot lose messages (LocalBus) never
//     calls it.
type Bus interface {
	Publish(ctx context.Context, m Message) error
	Subscribe(ctx context.Context, fn func(Message), onGap func()) (stop func(), err error)
}

var _ Bus = (*LocalBus)(nil)

// LocalBus is the in-process Bus of the embedded deployment: Publish calls
// every subscriber's fn on the publisher's goroutine before it returns, so it
// holds no queue and needs no Start/Stop.
type LocalBus struct {
	mu   sync.RWMutex
	next uint64
	subs map[uint64]*localSub
}

type localSub struct {
	// mu is held for reading while fn runs, so stop can wait for a running
	// call to finish and then guarantee no further call.
	mu      sync.RWMutex
	stopped bool
	fn      func(Message)
}

// NewLocalBus returns an empty in-process bus.
func NewLocalBus() *LocalBus {
	return &LocalBus{subs: make(map[uint64]*localSub)}
}

// Publish hands m to every current subscription.
func (b *LocalBus) Publish(ctx context.Context, m Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("realtime: publish: %w", err)
	}
	b.mu.RLock()
	subs := make([]*localSub, 0, len(b.subs))
	for _, s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.RUnlock()
	for _, s := range subs {
		s.mu.RLock()
		if !s.stopped {
			s.fn(m)
		}
		s.mu.RUnlock()
	}
	return nil
}

// Subscribe registers fn until stop is called or ctx is done. Publish calls
// fn directly, so nothing is ever missed and onGap is never called.
func (b *LocalBus) Subscribe(ctx context.Context, fn func(Message), onGap func()) (func(), error) {
	if fn == nil {
		return nil, errors.New("realtime: subscribe: nil fn")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("realtime: subscribe: %w", err)
	}
	s := &localSub{fn: fn}
	b.mu.Lock()
	id := b.next
	b.next++
	b.subs[id] = s
	b.mu.Unlock()

	var (
		once      sync.Once
		stopAfter func() bool
	)
	stop := func() {
		once.Do(func() {
			stopAfter()
			b.mu.Lock()
			delete(b.subs, id)
			b.mu.Unlock()
			s.mu.Lock()
			s.stopped = true
			s.mu.Unlock()
		})
	}
	stopAfter = context.AfterFunc(ctx, stop)
	return stop, nil
}
