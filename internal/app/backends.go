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

func (b *backends) Close() error {
	b.intake.close()
	return b.db.Close()
}

// embeddedIntake commits assets and their jobs in one SQLite transaction:
// the asset rows and River's job rows live in the same file.
//
// Commits are grouped: one goroutine takes every request waiting at that
// moment and commits them together, each inside its own savepoint (a failed
// one is rolled back alone). One fsync then covers many uploads, and the
// single write connection is asked for once per group instead of once per
// upload. Without grouping, fifty concurrent uploads held the connection
// almost all the time and River's fetches and completions, waiting in the
// same pool, starved (measured: 6 jobs/s while uploads arrived, 100 after).
type embeddedIntake struct {
	db    *sqlitedb.DB
	store *sqlitestore.Store
	queue *riverqueue.Queue
	now   func() time.Time

	reqs chan *commitReq
	quit chan struct{}
	done chan struct{}
}

// commitReq is one unit of work for the group committer.
type commitReq struct {
	ctx context.Context
	fn  func(ctx context.Context, tx *sql.Tx) error
	err chan error // capacity 1
}

// maxGroup bounds one group commit.
const maxGroup = 64

func newEmbeddedIntake(db *sqlitedb.DB, store *sqlitestore.Store, q *riverqueue.Queue) *embeddedIntake {
	in := &embeddedIntake{db: db, store: store, queue: q, now: time.Now,
		reqs: make(chan *commitReq), quit: make(chan struct{}), done: make(chan struct{})}
	go in.committer()
	return in
}

// close stops the committer; requests after it fail.
func (in *embeddedIntake) close() {
	select {
	case <-in.quit:
	default:
		close(in.quit)
	}
	<-in.done
}

var errIntakeClosed = errors.New("intake: closed")

// inTx runs fn in a transaction shared with other requests of the same
// group; it returns once the group has committed (or fn failed). fn gets a
// context without ctx's cancellation: a client that goes away mid-group
// must not interrupt a statement, which would make SQLite roll back the
// whole group's transaction.
func (in *embeddedIntake) inTx(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	r := &commitReq{ctx: ctx, fn: fn, err: make(chan error, 1)}
	select {
	case in.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-in.quit:
		return errIntakeClosed
	}
	return <-r.err
}

func (in *embeddedIntake) committer() {
	defer close(in.done)
	for {
		var group []*commitReq
		select {
		case r := <-in.reqs:
			group = append(group, r)
		case <-in.quit:
			return
		}
	more:
		for len(group) < maxGroup {
			select {
			case r := <-in.reqs:
				group = append(group, r)
			default:
				break more
			}
		}
		in.commitGroup(group)
	}
}

func (in *embeddedIntake) commitGroup(group []*commitReq) {
	ctx := context.Background()
	tx, err := in.db.Write.BeginTx(ctx, nil)
	if err != nil {
		replyAll(group, fmt.Errorf("begin: %w", err))
		return
	}
	// Requests whose own work fails get their error now and leave the
	// group; the rest share the commit's outcome.
	kept := group[:0]
	for _, r := range group {
		err := r.ctx.Err()
		if err == nil {
			err = savepoint(ctx, tx, func() error { return r.fn(context.WithoutCancel(r.ctx), tx) })
		}
		if err != nil {
			r.err <- err
			continue
		}
		kept = append(kept, r)
	}
	if len(kept) == 0 {
		tx.Rollback()
		return
	}
	if err := tx.Commit(); err != nil {
		replyAll(kept, fmt.Errorf("commit: %w", err))
		return
	}
	replyAll(kept, nil)
}

func replyAll(group []*commitReq, err error) {
	for _, r := range group {
		r.err <- err
	}
}

// savepoint runs fn inside a savepoint of tx and undoes only fn's writes
// when it fails.
func savepoint(ctx context.Context, tx *sql.Tx, fn func() error) error {
	if _, err := tx.ExecContext(ctx, "SAVEPOINT intake"); err != nil {
		return err
	}
	if err := fn(); err != nil {
		if _, rerr := tx.ExecContext(ctx, "ROLLBACK TO intake"); rerr != nil {
			return errors.Join(err, rerr)
		}
		tx.ExecContext(ctx, "RELEASE intake")
		return err
	}
	_, err := tx.ExecContext(ctx, "RELEASE intake")
	return err
}

func (in *embeddedIntake) Submit(ctx context.Context, assets []*asset.Asset, jobs []queue.Job) error {
	return in.inTx(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := in.store.CreateTx(ctx, tx, assets...); err != nil {
			return err
		}
		return in.queue.EnqueueTx(ctx, tx, jobs...)
	})
}

func (in *embeddedIntake) Resubmit(ctx context.Context, assetID, newJobID string) (*asset.Asset, error) {
	var a *asset.Asset
	err := in.inTx(ctx, func(ctx context.Context, tx *sql.Tx) error {
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
	return in.inTx(ctx, func(ctx context.Context, tx *sql.Tx) error {
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
