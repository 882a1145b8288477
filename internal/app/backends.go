package app

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/blob/s3blob"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/sqlitelog"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/idempotency/sqlitekeys"
	"github.com/klectr/klectr/internal/intake/sqliteintake"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// intake is what the API and `klectr jobs` ask of either shape's intake.
type intake = httpapi.Intake

// backends are the concrete stores of one process, chosen by configuration:
// the embedded shape (SQLite store and queue in one file, in-process bus) or
// the scale-out shape (MongoDB store, Redis queue and bus). Blobs are on a
// directory or in S3 in either shape.
type backends struct {
	store  asset.Store
	queue  queue.Backend
	bus    realtime.Bus
	blobs  blob.Store
	intake intake
	// events is the users' event log, in the shape's own store.
	events eventlog.Log
	// eventsWithState: the store appends each final state's event to events
	// in the state's own transaction (embedded), so the handler publishes
	// it on the bus alone (pipeline.Handler.Bus).
	eventsWithState bool
	// expireKeys deletes the idempotency records expired before a time.
	expireKeys func(ctx context.Context, before time.Time) (int64, error)
	ready      []httpapi.Check
	// closers release the backends, last opened first.
	closers []func() error
}

// queueOptions are what differs between processes that share backends.
type queueOptions struct {
	handler queue.Handler // nil: enqueue only
	// single: this process is the only worker on the data (klectr serve
	// on the embedded shape), so jobs left running at start belonged to a
	// dead process.
	single bool
}

// openTimeout bounds start-up's first contact with every backend: an
// unreachable MongoDB, Redis or bucket stops start-up with a message
// instead of hanging.
const openTimeout = 20 * time.Second

// openBackends opens the backends cfg names. config.Validate has refused
// the mixed shapes.
func openBackends(ctx context.Context, cfg *config.Config, log *slog.Logger, qo queueOptions) (_ *backends, err error) {
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	b := &backends{}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	blobCheck, err := b.openBlobs(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var store, queue, bus func(context.Context) error
	if cfg.Embedded() {
		store, queue, bus, err = b.openEmbedded(ctx, cfg, log, qo)
	} else {
		if cfg.BlobURL == "" {
			log.Warn("BLOB_URL is unset: images go to DATA_DIR/blobs, which processes on other machines cannot read; set BLOB_URL=s3://… or a shared file:///dir")
		}
		store, queue, bus, err = b.openScaleOut(ctx, cfg, log, qo)
	}
	if err != nil {
		return nil, err
	}
	b.ready = readyChecks(store, queue, bus, blobCheck)
	return b, nil
}

// openBlobs opens BLOB_URL's store and returns its readiness check.
func (b *backends) openBlobs(ctx context.Context, cfg *config.Config) (func(context.Context) error, error) {
	if dir := cfg.BlobDir(); dir != "" {
		d, err := blob.NewDisk(dir)
		if err != nil {
			return nil, fmt.Errorf("BLOB_URL: %w", err)
		}
		b.blobs = d
		return spaceCheck(dir, minFree), nil
	}
	sc, err := s3blob.ParseURL(cfg.BlobURL)
	if err != nil {
		return nil, fmt.Errorf("BLOB_URL: %w", err)
	}
	s, err := s3blob.New(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("BLOB_URL: %w", err)
	}
	b.blobs = s
	return throttled(s.Ping, probeEvery), nil
}

// openEmbedded opens one SQLite file in DATA_DIR for the assets and the
// queue, whose intake commits both in one transaction, and the in-process
// bus. The store is ready when it takes writes: a probe commit, and room on
// its file system (see minFree); the queue shares its file, so a read of it
// suffices.
func (b *backends) openEmbedded(ctx context.Context, cfg *config.Config, log *slog.Logger, qo queueOptions) (store, q, bus func(context.Context) error, err error) {
	db, err := sqlitedb.Open(ctx, filepath.Join(cfg.DataDir, "klectr.db"))
	if err != nil {
		return nil, nil, nil, err
	}
	b.closers = append(b.closers, db.Close)
	st, err := sqlitestore.New(ctx, db)
	if err != nil {
		return nil, nil, nil, err
	}
	rq, err := riverqueue.New(ctx, db, riverqueue.Config{
		Handler:        qo.handler,
		Policy:         policy(cfg),
		Concurrency:    cfg.WorkerConcurrency,
		JobTimeout:     jobTimeout(cfg),
		RecoverOnStart: qo.single,
		Logger:         log.With("component", "queue"),
	})
	if err != nil {
		return nil, nil, nil, err
	}
	keys, err := sqlitekeys.New(ctx, db)
	if err != nil {
		return nil, nil, nil, err
	}
	in := sqliteintake.New(db, st, rq, keys, newIDs())
	b.closers = append(b.closers, func() error { in.Close(); return nil })
	b.store, b.queue, b.bus, b.intake = st, rq, realtime.NewLocalBus(), in
	b.expireKeys = keys.Expire
	events, err := sqlitelog.New(ctx, db)
	if err != nil {
		return nil, nil, nil, err
	}
	events.Group = st.Group // a relayed event's append shares the worker's commits
	// A job's event commits with its final state: one commit fewer per
	// job on the one write connection, and none owed for the relay.
	st.LogEvents(func(ctx context.Context, tx *sql.Tx, a *asset.Asset) error {
		raw, err := json.Marshal(pipeline.NewEvent(a))
		if err != nil {
			return err
		}
		return events.AppendTx(ctx, tx, a.UserID, a.EventID, raw, time.Now())
	})
	b.events, b.eventsWithState = events, true

	store = throttled(all(spaceCheck(cfg.DataDir, minFree), db.WriteProbe), probeEvery)
	q = func(ctx context.Context) error {
		_, err := rq.Counts(ctx)
		return err
	}
	return store, q, always, nil
}

// policy is the retry policy every process must share: it also fixes the
// attempts of the jobs a process enqueues.
func policy(cfg *config.Config) queue.Policy {
	return queue.Policy{Retries: cfg.JobMaxRetries, Backoff: cfg.JobBackoff}
}

// jobTimeout bounds one attempt: an AI call plus reading the image and two
// small writes, which the margin covers.
func jobTimeout(cfg *config.Config) time.Duration { return cfg.AITimeout + 30*time.Second }

// Close releases every backend, last opened first. It is safe on a
// partly opened set.
func (b *backends) Close() error {
	var errs []error
	for i := len(b.closers) - 1; i >= 0; i-- {
		errs = append(errs, b.closers[i]())
	}
	b.closers = nil
	return errors.Join(errs...)
}
