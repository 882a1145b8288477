package app

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// backends are the concrete stores of one process.
type backends struct {
	db     *sqlitedb.DB
	store  *sqlitestore.Store
	queue  *riverqueue.Queue
	blobs  *blob.Disk
	intake *embeddedIntake
}

// queueOptions are what differs between processes that share backends.
type queueOptions struct {
	handler queue.Handler // nil: enqueue only
	// single: this process is the only worker on the data (klectr serve),
	// so jobs left running at start belonged to a dead process.
	single bool
}

// openBackends opens the embedded backends in cfg.DataDir: one SQLite file
// for assets and the queue, and a blob directory.
func openBackends(ctx context.Context, cfg *config.Config, log *slog.Logger, qo queueOptions) (*backends, error) {
	if !cfg.Embedded() {
		return nil, errors.New("MONGODB_URI and REDIS_URL are not supported by this build yet; unset them to run on the embedded backends")
	}
	db, err := sqlitedb.Open(ctx, filepath.Join(cfg.DataDir, "klectr.db"))
	if err != nil {
		return nil, err
	}
	b := &backends{db: db}
	if b.store, err = sqlitestore.New(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	if b.blobs, err = blob.NewDisk(filepath.Join(cfg.DataDir, "blobs")); err != nil {
		db.Close()
		return nil, err
	}
	b.queue, err = riverqueue.New(ctx, db, riverqueue.Config{
		Handler:     qo.handler,
		Policy:      queue.Policy{Retries: cfg.JobMaxRetries, Backoff: cfg.JobBackoff},
		Concurrency: cfg.WorkerConcurrency,
		// One attempt is an AI call plus reading the image and two small
		// writes; the margin covers those.
		JobTimeout:     cfg.AITimeout + 30*time.Second,
		RecoverOnStart: qo.single,
		Logger:         log.With("component", "queue"),
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	b.intake = newEmbeddedIntake(db, b.store, b.queue)
	return b, nil
}

// ready reports whether the store and the queue answer.
func (b *backends) ready(ctx context.Context) error {
	if err := b.store.Ping(ctx); err != nil {
		return err
	}
	_, err := b.queue.Counts(ctx)
	return err
}

func (b *backends) Close() error { return b.db.Close() }

// embeddedIntake commits assets and their jobs in one SQLite transaction:
// the asset rows and River's job rows live in the same file.
//
// Commits take turns on a one-slot semaphore before they ask for the single
// write connection. database/sql hands a freed connection to a random
// waiter, so fifty uploads waiting in the pool starve River's fetches and
// completions (measured: 6 jobs/s while uploads arrived, 100 after). With
// at most one upload waiting, the worker gets the connection about every
// other time.
type embeddedIntake struct {
	db    *sqlitedb.DB
	store *sqlitestore.Store
	queue *riverqueue.Queue
	now   func() time.Time
	turn  chan struct{} // capacity 1
}

func newEmbeddedIntake(db *sqlitedb.DB, store *sqlitestore.Store, q *riverqueue.Queue) *embeddedIntake {
	return &embeddedIntake{db: db, store: store, queue: q, now: time.Now, turn: make(chan struct{}, 1)}
}

func (in *embeddedIntake) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	select {
	case in.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-in.turn }()
	tx, err := in.db.Write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (in *embeddedIntake) Submit(ctx context.Context, assets []*asset.Asset, jobs []queue.Job) error {
	return in.inTx(ctx, func(tx *sql.Tx) error {
		if err := in.store.CreateTx(ctx, tx, assets...); err != nil {
			return err
		}
		return in.queue.EnqueueTx(ctx, tx, jobs...)
	})
}

func (in *embeddedIntake) Resubmit(ctx context.Context, assetID, newJobID string) (*asset.Asset, error) {
	var a *asset.Asset
	err := in.inTx(ctx, func(tx *sql.Tx) error {
		now := in.now()
		var err error
		if a, err = in.store.ReprocessTx(ctx, tx, assetID, newJobID, now); err != nil {
			return err
		}
		job, err := pipeline.NewJob(a, now)
		if err != nil {
			return err
		}
		return in.queue.EnqueueTx(ctx, tx, job)
	})
	return a, err
}

// Replay runs a dead job again. Its asset, failed by that job, goes back to
// processing under the same job id in the same transaction, so that the
// handler does the work instead of acknowledging a repeat.
func (in *embeddedIntake) Replay(ctx context.Context, jobID string) error {
	info, err := in.queue.Get(ctx, jobID)
	if err != nil {
		return err
	}
	if info.State != queue.Dead {
		return queue.ErrNotDead
	}
	p, err := pipeline.DecodePayload(&queue.Job{ID: info.ID, Payload: info.Payload})
	if err != nil {
		return err
	}
	return in.inTx(ctx, func(tx *sql.Tx) error {
		_, err := in.store.ReprocessTx(ctx, tx, p.AssetID, jobID, in.now())
		// ErrNotFound: the asset is gone, and the handler will acknowledge
		// the job. ErrConflict: it is not failed (e.g. a user retry gave it
		// a new job), and the handler will acknowledge this one.
		if err != nil && !errors.Is(err, asset.ErrNotFound) && !errors.Is(err, asset.ErrConflict) {
			return err
		}
		return in.queue.RetryTx(ctx, tx, jobID)
	})
}
