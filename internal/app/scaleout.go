package app

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/klectr/klectr/internal/asset/mongostore"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/mongolog"
	"github.com/klectr/klectr/internal/idempotency/mongokeys"
	"github.com/klectr/klectr/internal/intake/splitintake"
	"github.com/klectr/klectr/internal/queue/redisqueue"
	"github.com/klectr/klectr/internal/realtime/redisbus"
)

// openScaleOut opens the shared backends: assets in MongoDB, jobs and event
// fan-out in Redis. They share no transaction, so the intake writes the
// assets first and enqueues after (splitintake), and the reconciler repairs
// what a crash between the two leaves. Each is ready when it answers.
func (b *backends) openScaleOut(ctx context.Context, cfg *config.Config, log *slog.Logger, qo queueOptions) (store, q, bus func(context.Context) error, err error) {
	ms, err := mongostore.New(ctx, mongostore.Config{URI: cfg.MongoURI, Logger: log.With("component", "store")})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("MONGODB_URI: %w", err)
	}
	b.closers = append(b.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		return ms.Close(ctx)
	})
	rq, err := redisqueue.New(ctx, redisqueue.Config{
		URL:         cfg.RedisURL,
		Handler:     qo.handler,
		Policy:      policy(cfg),
		Concurrency: cfg.WorkerConcurrency,
		JobTimeout:  jobTimeout(cfg),
		Logger:      log.With("component", "queue"),
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	b.closers = append(b.closers, rq.Close)
	if qo.handler != nil {
		warnings, err := rq.CheckPersistence(ctx)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("REDIS_URL: %w", err)
		}
		for _, w := range warnings {
			log.Warn("Redis can lose jobs: " + w)
		}
	}
	rb, err := redisbus.New(ctx, redisbus.Config{URL: cfg.RedisURL, Channel: eventChannel(cfg.RedisURL), Logger: log.With("component", "bus")})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	b.closers = append(b.closers, rb.Close)
	b.store, b.queue, b.bus = ms, rq, rb
	keys, err := mongokeys.Open(ctx, cfg.MongoURI, mongostore.DefaultDatabase)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("MONGODB_URI: %w", err)
	}
	b.closers = append(b.closers, keys.Close)
	b.expireKeys = keys.Expire
	b.intake = splitintake.New(ms, rq, keys, newIDs(), log.With("component", "intake"))
	if b.events, err = b.openEventLog(ctx, cfg); err != nil {
		return nil, nil, nil, fmt.Errorf("MONGODB_URI: %w", err)
	}
	return throttled(ms.Ping, probeEvery), throttled(rq.Ping, probeEvery), throttled(rb.Ping, probeEvery), nil
}

// openEventLog opens the event log in MONGODB_URI's database (the one
// mongostore uses), on a client of its own that the backends close.
func (b *backends) openEventLog(ctx context.Context, cfg *config.Config) (eventlog.Log, error) {
	cs, err := connstring.ParseAndValidate(cfg.MongoURI)
	if err != nil {
		return nil, err
	}
	client, err := mongo.Connect(options.Client().ApplyURI(cfg.MongoURI))
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		return client.Disconnect(ctx)
	})
	return mongolog.New(ctx, client.Database(cmp.Or(cs.Database, mongostore.DefaultDatabase)), cfg.EventRetention)
}

// eventChannel is the pub/sub channel of the deployment on REDIS_URL's
// database. Channels are global to a Redis server while keys are per
// database: naming the channel after the database keeps two deployments (or
// two test runs) on one server from receiving each other's events.
func eventChannel(redisURL string) string {
	db := 0
	if opt, err := redis.ParseURL(redisURL); err == nil {
		db = opt.DB
	}
	return fmt.Sprintf("klectr:%d:events", db)
}
