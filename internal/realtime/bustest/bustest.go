// Package bustest is the conformance suite every realtime.Bus implementation
// runs, so the in-process bus and the Redis one behave the same to the server.
package bustest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/realtime"
)

// waitTimeout bounds every wait for a message that must arrive; a conforming
// bus delivers within milliseconds, so only a broken one ever reaches it.
const waitTimeout = 10 * time.Second

// TestBus runs the Bus contract (see realtime.Bus). newNetwork is called once
// per subtest and returns open, which connects one more "process" to a bus
// namespace that only this subtest uses; Buses returned by one open must see
// each other's messages (an in-process bus may return itself every time).
func TestBus(t *testing.T, newNetwork func(t *testing.T) (open func() realtime.Bus)) {
	t.Helper()

	t.Run("DeliversToEverySubscription", func(t *testing.T) {
		t.Parallel()
		newBus := newNetwork(t)
		pub := newBus()
		subA, subB := newBus(), newBus()
		a := subscribe(t, subA)
		b := subscribe(t, subB)
		want := realtime.Message{UserID: "u1", Event: "asset_processed", Data: json.RawMessage(`{"n":1}`)}
		if err := pub.Publish(context.Background(), want); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		for name, c := range map[string]*collector{"a": a, "b": b} {
			got := c.next(t)
			if got.UserID != want.UserID || got.Event != want.Event || !jsonEqual(got.Data, want.Data) {
				t.Errorf("subscription %s got %+v, want %+v", name, got, want)
			}
		}
	})

	t.Run("KeepsPublishOrder", func(t *testing.T) {
		t.Parallel()
		newBus := newNetwork(t)
		pub, sub := newBus(), newBus()
		c := subscribe(t, sub)
		const n = 500
		for i := range n {
			m := realtime.Message{UserID: "u1", Event: "e", Data: json.RawMessage(fmt.Sprint(i))}
			if err := pub.Publish(context.Background(), m); err != nil {
				t.Fatalf("Publish %d: %v", i, err)
			}
		}
		for i := range n {
			if got := c.next(t); string(got.Data) != fmt.Sprint(i) {
				t.Fatalf("message %d has data %s; order not kept", i, got.Data)
			}
		}
	})

	t.Run("ConcurrentPublishersLoseNothing", func(t *testing.T) {
		t.Parallel()
		newBus := newNetwork(t)
		sub := newBus()
		c := subscribe(t, sub)
		const publishers, each = 8, 200
		var wg sync.WaitGroup
		for p := range publishers {
			pub := newBus()
			wg.Go(func() {
				for i := range each {
					m := realtime.Message{UserID: fmt.Sprint("u", p), Event: "e", Data: json.RawMessage(fmt.Sprint(i))}
					if err := pub.Publish(context.Background(), m); err != nil {
						t.Errorf("Publish: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		seen := make(map[string]bool)
		for range publishers * each {
			m := c.next(t)
			key := m.UserID + "/" + string(m.Data)
			if seen[key] {
				t.Fatalf("message %s delivered twice", key)
			}
			seen[key] = true
		}
	})

	t.Run("RejectsInvalidMessages", func(t *testing.T) {
		t.Parallel()
		newBus := newNetwork(t)
		bus := newBus()
		for _, m := range []realtime.Message{
			{Event: "e"},
			{UserID: "u1"},
			{UserID: "u1", Event: "e", Data: json.RawMessage(`{"unterminated"`)},
		} {
			if err := bus.Publish(context.Background(), m); !errors.Is(err, realtime.ErrInvalidMessage) {
				t.Errorf("Publish(%+v) = %v, want ErrInvalidMessage", m, err)
			}
		}
	})

	t.Run("NothingAfterStop", func(t *testing.T) {
		t.Parallel()
		newBus := newNetwork(t)
		pub, sub := newBus(), newBus()
		var (
			mu      sync.Mutex
			stopped bool
			late    int
		)
		received := make(chan struct{}, 1)
		stop, err := sub.Subscribe(context.Background(), func(realtime.Message) {
			mu.Lock()
			defer mu.Unlock()
			if stopped {
				late++
			}
			select {
			case received <- struct{}{}:
			default:
			}
		}, noGap(t))
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		// A second subscription tells us when a message published after stop
		// has gone through the bus, so its absence above is meaningful.
		witness := subscribe(t, sub)
		publish(t, pub, "before")
		<-received
		witness.next(t)
		stop()
		mu.Lock()
		stopped = true
		mu.Unlock()
		stop() // idempotent
		publish(t, pub, "after")
		witness.next(t)
		mu.Lock()
		defer mu.Unlock()
		if late != 0 {
			t.Errorf("fn called %d times after stop returned", late)
		}
	})

	t.Run("CancelledContextStops", func(t *testing.T) {
		t.Parallel()
		newBus := newNetwork(t)
		pub, sub := newBus(), newBus()
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan realtime.Message, 10)
		if _, err := sub.Subscribe(ctx, func(m realtime.Message) { got <- m }, noGap(t)); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		witness := subscribe(t, sub)
		publish(t, pub, "before")
		witness.next(t)
		cancel()
		// Cancellation may take effect asynchronously; publish until a
		// message reaches the witness but not the cancelled subscription.
		deadline := time.Now().Add(waitTimeout)
		for {
			if time.Now().After(deadline) {
				t.Fatal("subscription still receives after its ctx was cancelled")
			}
			for len(got) > 0 {
				<-got
			}
			publish(t, pub, "after")
			witness.next(t)
			if len(got) == 0 {
				return
			}
		}
	})
}

func publish(t *testing.T, b realtime.Bus, data string) {
	t.Helper()
	m := realtime.Message{UserID: "u1", Event: "e", Data: json.RawMessage(fmt.Sprintf("%q", data))}
	if err := b.Publish(context.Background(), m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

type collector struct{ ch chan realtime.Message }

func subscribe(t *testing.T, b realtime.Bus) *collector {
	t.Helper()
	c := &collector{ch: make(chan realtime.Message, 4096)}
	stop, err := b.Subscribe(context.Background(), func(m realtime.Message) { c.ch <- m }, noGap(t))
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(stop)
	return c
}

// noGap is the onGap of the suite's subscriptions: none of them loses its
// connection, so a bus that reports a gap anyway would make its users
// recover for nothing.
func noGap(t *testing.T) func() {
	return func() { t.Errorf("onGap called, but no connection was lost") }
}

func (c *collector) next(t *testing.T) realtime.Message {
	t.Helper()
	select {
	case m := <-c.ch:
		return m
	case <-time.After(waitTimeout):
		t.Fatal("no message within", waitTimeout)
		return realtime.Message{}
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}
