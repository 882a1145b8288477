package app

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/intake/sqliteintake"
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
	intake *sqliteintake.Intake
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
	b.intake = sqliteintake.New(db, b.store, b.queue, newIDs())
	return b, nil
}

// checks are what /readyz reports. The store must take writes: a probe
// commit, and room on its file system (see minFree). The queue shares the
// store's file, so a read of it suffices.
func (b *backends) checks(cfg *config.Config) []httpapi.Check {
	store := throttled(all(spaceCheck(cfg.DataDir, minFree), b.db.WriteProbe), probeEvery)
	queue := func(ctx context.Context) error {
		_, err := b.queue.Counts(ctx)
		return err
	}
	return readyChecks(store, queue, always, spaceCheck(filepath.Join(cfg.DataDir, "blobs"), minFree))
}

func (b *backends) Close() error {
	b.intake.Close()
	return b.db.Close()
}
