package realtime_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/klectr/klectr/internal/realtime"
)

// deafBus is a LocalBus whose subscriptions can be cut off, as the api's
// Redis connection in a partition: Publish succeeds but reaches nobody
// until heal, which reports the gap as a Bus must.
type deafBus struct {
	local *realtime.LocalBus
	mu    sync.Mutex
	deaf  bool
	gaps  []func()
}

func newDeafBus() *deafBus { return &deafBus{local: realtime.NewLocalBus()} }

func (b *deafBus) Publish(ctx context.Context, m realtime.Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.deaf {
		return m.Validate()
	}
	return b.local.Publish(ctx, m)
}

func (b *deafBus) Subscribe(ctx context.Context, fn func(realtime.Message), onGap func()) (func(), error) {
	b.mu.Lock()
	b.gaps = append(b.gaps, onGap)
	b.mu.Unlock()
	return b.local.Subscribe(ctx, fn, nil)
}

func (b *deafBus) cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deaf = true
}

// heal resubscribes: each onGap is called before any later message.
func (b *deafBus) heal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deaf = false
	for _, gap := range b.gaps {
		if gap != nil {
			gap()
		}
	}
}

// TestE2EBusGapRecovers: events published while the server's bus
// subscription was cut off never reach its sockets live; when the bus
// reports the gap, the server closes the connections and the official
// client reconnects, recovers, and gets each missed event once, in order,
// then the live ones. The client itself saw no network problem.
func TestE2EBusGapRecovers(t *testing.T) {
	t.Parallel()
	for name, tr := range map[string]map[string]any{"websocket": wsOnly, "polling": pollingOnly} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			bus := newDeafBus()
			rs := startRecoveryServer(t, "", nil, nil, func(o *realtime.Options) { o.Bus = bus })
			h := startHarness(t)
			quick := map[string]any{"reconnectionDelay": 100, "reconnectionDelayMax": 100, "randomizationFactor": 0}
			h.connect("a", rs.url, auth(validToken("u1"), merge(tr, quick)))
			h.want("a", "connect", map[string]any{"recovered": false})
			h.wantLogged("a", "u1", rs.emit(t, "u1", 0))

			bus.cut()
			for i := 1; i <= 5; i++ {
				rs.emit(t, "u1", i)
				rs.emit(t, "u2", i)
			}
			bus.heal()
			h.want("a", "disconnect", nil)
			h.want("a", "connect", map[string]any{"recovered": true})
			for i := 1; i <= 5; i++ {
				h.wantLogged("a", "u1", fmt.Sprintf("evt-u1-%d", i))
			}
			h.wantLogged("a", "u1", rs.emit(t, "u1", 6))
			h.noMoreEvents("a")
		})
	}
}

// TestBusGapWithoutBacklog: without a Backlog there is nothing to replay,
// but the connections are still closed, so the clients reconnect (not
// recovered), their cue to refetch.
func TestBusGapWithoutBacklog(t *testing.T) {
	t.Parallel()
	bus := newDeafBus()
	ts := startServer(t, "", nil, func(o *realtime.Options) { o.Bus = bus })
	h := startHarness(t)
	h.connect("a", ts.url, auth(validToken("u1"), map[string]any{"reconnectionDelay": 100, "reconnectionDelayMax": 100}))
	h.want("a", "connect", map[string]any{"recovered": false})
	bus.cut()
	bus.heal()
	h.want("a", "disconnect", nil)
	h.want("a", "connect", map[string]any{"recovered": false})
}
