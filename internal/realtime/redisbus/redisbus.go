// Package redisbus is the realtime.Bus of the scale-out deployment: events go
// through one Redis pub/sub channel that every api and worker process shares.
//
// Guarantees beyond realtime.Bus: a subscription survives a Redis restart or a
// dropped connection (go-redis reconnects and subscribes again, within a few
// seconds of Redis being back). Messages published while the subscriber is
// disconnected are lost — Redis pub/sub stores nothing, and the publisher's
// Redis may answer while the subscriber's connection is cut — so the
// subscription's onGap is called each time it is subscribed again. A Publish
// that Redis did not take fails, and the pipeline's outbox re-publishes it.
package redisbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/realtime"
)

// DefaultChannel is the Redis channel used when Config.Channel is empty.
const DefaultChannel = "klectr:events"

// pingTimeout bounds the start-up check that Redis answers.
const pingTimeout = 5 * time.Second

// publishTimeout bounds a Publish, go-redis's retries included (alone they
// may take 20 s when each dial to an unreachable host times out): the
// caller keeps the event owed and sends it again later.
const publishTimeout = 5 * time.Second

// Config configures a Bus.
type Config struct {
	// URL is a go-redis URL: redis://[:password@]host:port[/db] or rediss://.
	URL string
	// Channel is the pub/sub channel every process of a deployment shares.
	// Pub/sub channels are global to a Redis server (not scoped by database),
	// so two deployments on one server need two names. Defaults to
	// DefaultChannel.
	Channel string
	// Logger receives undeliverable messages; nil discards.
	Logger *slog.Logger
}

// Bus is a realtime.Bus on Redis pub/sub. Each subscription holds one Redis
// connection of its own.
type Bus struct {
	rdb     *redis.Client
	channel string
	log     *slog.Logger

	mu     sync.Mutex
	closed bool
	subs   map[*subscription]struct{}
}

var _ realtime.Bus = (*Bus)(nil)

// New connects to Redis and fails when it does not answer within a few
// seconds (or before ctx ends).
func New(ctx context.Context, cfg Config) (*Bus, error) {
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("redisbus: %w", err)
	}
	if cfg.Channel == "" {
		cfg.Channel = DefaultChannel
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Bus{
		rdb:     redis.NewClient(opt),
		channel: cfg.Channel,
		log:     cfg.Logger,
		subs:    make(map[*subscription]struct{}),
	}
	if err := b.Ping(ctx); err != nil {
		b.rdb.Close()
		return nil, err
	}
	return b, nil
}

// Ping reports whether Redis answers, within a few seconds at most.
func (b *Bus) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisbus: redis at %s: %w", b.rdb.Options().Addr, err)
	}
	return nil
}

// Close stops every subscription and closes the connections. It is
// idempotent.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := b.subs
	b.subs = nil
	b.mu.Unlock()
	for s := range subs {
		s.stop()
	}
	return b.rdb.Close()
}

// Publish sends m to every subscription of every process; it returns once
// Redis has taken the message, or an error within a few seconds at most.
// An error may also come after Redis took it (the reply was lost), so a
// caller that publishes again may deliver twice.
func (b *Bus) Publish(ctx context.Context, m realtime.Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	payload, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("redisbus: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if err := b.rdb.Publish(ctx, b.channel, payload).Err(); err != nil {
		return fmt.Errorf("redisbus: publish: %w", err)
	}
	return nil
}

// Subscribe returns once Redis has confirmed the subscription, so a message
// published after it returns reaches fn. onGap is called when Redis confirms
// a later subscription of the same PubSub: go-redis subscribes again only
// after it lost the connection.
func (b *Bus) Subscribe(ctx context.Context, fn func(realtime.Message), onGap func()) (func(), error) {
	if fn == nil {
		return nil, errors.New("redisbus: subscribe: nil fn")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("redisbus: subscribe: %w", err)
	}
	ps := b.rdb.Subscribe(ctx, b.channel)
	// The confirmation is the first reply on the subscription's connection.
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return nil, fmt.Errorf("redisbus: subscribe: %w", err)
	}
	s := &subscription{ps: ps, quit: make(chan struct{}), done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		ps.Close()
		return nil, errors.New("redisbus: subscribe: bus closed")
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()

	go s.run(b.log, fn, onGap)
	stopAfter := context.AfterFunc(ctx, s.stop)
	return func() {
		stopAfter()
		s.stop()
		b.mu.Lock()
		delete(b.subs, s)
		b.mu.Unlock()
	}, nil
}

type subscription struct {
	ps   *redis.PubSub
	once sync.Once
	quit chan struct{}
	done chan struct{}
}

// run calls fn for each message, in the order Redis delivered them, and
// onGap for each confirmation of a resubscription, until stop. go-redis's
// channel pings the server when idle and reconnects and resubscribes when
// the connection is lost; the confirmation of the first subscription was
// read by Subscribe, so every one that comes here follows a loss.
func (s *subscription) run(log *slog.Logger, fn func(realtime.Message), onGap func()) {
	defer close(s.done)
	ch := s.ps.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	for {
		select {
		case <-s.quit:
			return
		case v, ok := <-ch:
			if !ok {
				return
			}
			var call func()
			switch v := v.(type) {
			case *redis.Subscription:
				if v.Kind != "subscribe" {
					continue
				}
				log.Warn("redisbus: subscribed again after a lost connection; messages published meanwhile may be missing", "channel", v.Channel)
				if onGap == nil {
					continue
				}
				call = onGap
			case *redis.Message:
				var m realtime.Message
				if err := json.Unmarshal([]byte(v.Payload), &m); err != nil {
					log.Warn("redisbus: dropping an undecodable message", "channel", v.Channel, "bytes", len(v.Payload), "err", err)
					continue
				}
				if err := m.Validate(); err != nil {
					log.Warn("redisbus: dropping an invalid message", "channel", v.Channel, "err", err)
					continue
				}
				call = func() { fn(m) }
			default:
				continue
			}
			// Nothing already buffered is delivered once stop began.
			select {
			case <-s.quit:
				return
			default:
			}
			call()
		}
	}
}

// stop ends the subscription and waits until fn is no longer running.
func (s *subscription) stop() {
	s.once.Do(func() {
		close(s.quit)
		s.ps.Close()
	})
	<-s.done
}
