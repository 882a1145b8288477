// Package sqliteintake is the intake of the embedded shape: the asset rows
// (sqlitestore) and their jobs (riverqueue) live in one SQLite file, so an
// upload's assets and jobs commit in one transaction — all of them or none,
// and durable when Submit returns.
//
// Commits are grouped: one goroutine takes every request waiting at that
// moment and commits them together, each inside its own savepoint (a failed
// one is rolled back alone). One fsync then covers many uploads, and the
// single write connection is asked for once per group instead of once per
// upload. Without grouping, fifty concurrent uploads held the connection
// almost all the time and River's fetches and completions, waiting in the
// same pool, starved (measured: 6 jobs/s while uploads arrived, 100 after).
package sqliteintake

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/idempotency/sqlitekeys"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
	"github.com/klectr/klectr/internal/wire"
)

// Intake commits assets and their jobs together. Close stops it.
type Intake struct {
	db    *sqlitedb.DB
	store *sqlitestore.Store
	queue *riverqueue.Queue
	keys  *sqlitekeys.Keys
	now   func() time.Time
	newID func() string

	reqs chan *commitReq
	quit chan struct{}
	done chan struct{}
}

// commitReq is one unit of work for the group committer.
type commitReq struct {
	ctx context.Context
	fn  func(ctx context.Context, tx *sql.Tx) error
	// sub, when set, is what fn writes, so that the group's submissions
	// can be written together (see commitSubs); fn stays the fallback.
	sub *submission
	err chan error // capacity 1
}

// submission is an upload's rows: its assets, their jobs and, under an
// idempotency key, the key's record.
type submission struct {
	ctx    context.Context // the request's: its span goes into the jobs' traceparent
	assets []*asset.Asset
	claim  *idempotency.Claim
}

// maxGroup bounds one group commit.
const maxGroup = 64

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("sqliteintake: closed")

// New starts the group committer. store, q and keys must be on db; newID
// makes event ids (deleting a job fails its asset, which owes its event).
func New(db *sqlitedb.DB, store *sqlitestore.Store, q *riverqueue.Queue, keys *sqlitekeys.Keys, newID func() string) *Intake {
	in := &Intake{db: db, store: store, queue: q, keys: keys, now: time.Now, newID: newID,
		reqs: make(chan *commitReq), quit: make(chan struct{}), done: make(chan struct{})}
	go in.committer()
	return in
}

// Close stops the committer; calls after it fail with ErrClosed. It is
// idempotent.
func (in *Intake) Close() {
	select {
	case <-in.quit:
	default:
		close(in.quit)
	}
	<-in.done
}

// Submit stores the assets, each processing under its ProcessingJobID, and
// enqueues their jobs in one transaction.
func (in *Intake) Submit(ctx context.Context, assets []*asset.Asset) error {
	return in.submit(ctx, &submission{ctx: ctx, assets: assets})
}

// submit writes sub in a group transaction.
func (in *Intake) submit(ctx context.Context, sub *submission) error {
	r := &commitReq{ctx: ctx, sub: sub, err: make(chan error, 1)}
	r.fn = func(ctx context.Context, tx *sql.Tx) error { return in.write(ctx, tx, []*submission{sub}) }
	return in.send(ctx, r)
}

// write stores the submissions' assets, jobs and key records in tx: one
// statement per asset, one River insert for all the jobs. The jobs are
// built here, inside the group's transaction, so that their enqueuedAt
// (and the assets') is taken after the wait for the write connection,
// which is most of an upload's time before its 202: the SLO report's
// confirmation stage (receivedAt → enqueuedAt) then misses only the
// commit itself.
func (in *Intake) write(ctx context.Context, tx *sql.Tx, subs []*submission) error {
	now := in.now()
	var assets []*asset.Asset
	var jobs []queue.Job
	for _, s := range subs {
		js, err := wire.NewJobs(s.ctx, s.assets, now)
		if err != nil {
			return err
		}
		assets = append(assets, s.assets...)
		jobs = append(jobs, js...)
	}
	if err := in.store.CreateTx(ctx, tx, assets...); err != nil {
		return err
	}
	if err := in.queue.EnqueueTx(ctx, tx, jobs...); err != nil {
		return err
	}
	for _, s := range subs {
		if s.claim != nil {
			if err := in.keys.PutTx(ctx, tx, *s.claim); err != nil {
				return err
			}
		}
	}
	return nil
}

var _ idempotency.Submitter = (*Intake)(nil)

// SubmitOnce is Submit under an idempotency key (idempotency.Submitter):
// the key's record is written in the transaction of the assets and jobs,
// and held in memory while the request runs.
func (in *Intake) SubmitOnce(ctx context.Context, assets []*asset.Asset, c idempotency.Claim) (*idempotency.Record, error) {
	release, err := in.keys.Hold(c)
	if err != nil {
		return nil, err
	}
	defer release()
	// Held, so no other request of this process can write the key until
	// the transaction below has committed or failed.
	r, err := in.keys.Get(ctx, c.UserID, c.Key, c.At)
	if err != nil {
		return nil, err
	}
	if r != nil {
		if err := idempotency.Check(r, c); err != nil {
			return nil, err
		}
		return r, nil
	}
	return nil, in.submit(ctx, &submission{ctx: ctx, assets: assets, claim: &c})
}

// Resubmit moves a failed asset back to processing under newJobID and
// enqueues that job in the same transaction (asset.ErrConflict if it is not
// failed).
func (in *Intake) Resubmit(ctx context.Context, assetID, newJobID string) (*asset.Asset, error) {
	var a *asset.Asset
	err := in.inTx(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := in.now()
		var err error
		if a, err = in.store.ReprocessTx(ctx, tx, assetID, newJobID, now); err != nil {
			return err
		}
		job, err := wire.NewJob(ctx, a, now)
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
func (in *Intake) Replay(ctx context.Context, jobID string) error {
	info, err := in.queue.Get(ctx, jobID)
	if err != nil {
		return err
	}
	if info.State != queue.Dead {
		return queue.ErrNotDead
	}
	p, err := wire.DecodeJob(info.ID, info.Payload)
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

// DeleteJob deletes a job that is not running (queue.ErrActive if it is,
// queue.ErrNotFound if there is none) and, in the same transaction, fails
// its asset if the asset is still processing under it (wire.CodeJobDeleted,
// its event owed): a deleted job never strands its asset in processing.
func (in *Intake) DeleteJob(ctx context.Context, jobID string) error {
	info, err := in.queue.Get(ctx, jobID)
	if err != nil {
		return err
	}
	p, err := wire.DecodeJob(info.ID, info.Payload)
	if err != nil {
		// Not one of ours to reconcile; the job can still go.
		return in.queue.Delete(ctx, jobID)
	}
	return in.inTx(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := in.queue.DeleteTx(ctx, tx, jobID); err != nil {
			return err
		}
		a, err := in.store.GetTx(ctx, tx, p.AssetID)
		if errors.Is(err, asset.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if a.Status != asset.StatusProcessing || a.ProcessingJobID != jobID {
			return nil
		}
		_, err = in.store.FinishTx(ctx, tx, a.ID, jobID, wire.JobDeleted(a, in.now(), in.newID()))
		return err
	})
}

// inTx runs fn in a transaction shared with other requests of the same
// group; it returns once the group has committed (or fn failed). fn gets a
// context without ctx's cancellation: a client that goes away mid-group
// must not interrupt a statement, which would make SQLite roll back the
// whole group's transaction.
func (in *Intake) inTx(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return in.send(ctx, &commitReq{ctx: ctx, fn: fn, err: make(chan error, 1)})
}

// send hands r to the committer and waits for its outcome.
func (in *Intake) send(ctx context.Context, r *commitReq) error {
	select {
	case in.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-in.quit:
		return ErrClosed
	}
	return <-r.err
}

func (in *Intake) committer() {
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

func (in *Intake) commitGroup(group []*commitReq) {
	ctx := context.Background()
	tx, err := in.db.Write.BeginTx(ctx, nil)
	if err != nil {
		replyAll(group, fmt.Errorf("sqliteintake: begin: %w", err))
		return
	}
	// Requests whose own work fails get their error now and leave the
	// group; the rest share the commit's outcome.
	kept, rest := in.commitSubs(ctx, tx, group)
	for _, r := range rest {
		err := r.ctx.Err()
		if err == nil {
			err = sqlitedb.Savepoint(ctx, tx, func() error { return r.fn(context.WithoutCancel(r.ctx), tx) })
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
		replyAll(kept, fmt.Errorf("sqliteintake: commit: %w", err))
		return
	}
	replyAll(kept, nil)
}

// commitSubs writes the group's submissions together, in one savepoint:
// per upload, River's insert and the savepoints cost more than the rows.
// It returns them as kept, and the other requests as rest. If the
// combined write fails (one upload's duplicate id, a reused key), it is
// undone and every request is returned in rest, each to run alone in its
// own savepoint, so one upload's failure stays its own.
func (in *Intake) commitSubs(ctx context.Context, tx *sql.Tx, group []*commitReq) (kept, rest []*commitReq) {
	var subs []*submission
	for _, r := range group {
		if r.sub != nil && r.ctx.Err() == nil {
			kept = append(kept, r)
			subs = append(subs, r.sub)
		} else {
			rest = append(rest, r)
		}
	}
	if len(kept) < 2 {
		return nil, group
	}
	err := sqlitedb.Savepoint(ctx, tx, func() error { return in.write(ctx, tx, subs) })
	if err != nil {
		return nil, group
	}
	return kept, rest
}

func replyAll(group []*commitReq, err error) {
	for _, r := range group {
		r.err <- err
	}
}
