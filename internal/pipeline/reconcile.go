package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// ProcessingAssets is what the Reconciler reads of the asset store.
type ProcessingAssets interface {
	Processing(ctx context.Context, updatedBefore time.Time, afterID string, limit int) ([]*asset.Asset, error)
}

// JobQueue is what the Reconciler asks of the queue.
type JobQueue interface {
	Get(ctx context.Context, id string) (queue.Info, error)
	Enqueue(ctx context.Context, jobs ...queue.Job) error
}

// Reconciler repairs what a crash between the asset store and the queue
// leaves behind when they share no transaction: every asset processing (and
// unchanged for Grace) must have a live job.
//   - The queue does not know its job (a crash between the intake's asset
//     write and its enqueue; a queue that lost data): the same job is
//     enqueued again, under the same id, built from the asset.
//   - Its job is dead, or completed without a final state (a worker killed
//     on the last attempt): the asset fails with job_dead through the
//     Handler, which records and publishes its event.
//
// It is safe to run on every node at once: a second enqueue of a job id is
// refused by the queue (queue.ErrDuplicate) and Finish is guarded by the
// asset's job, so only one node's repair takes effect.
type Reconciler struct {
	Handler *Handler // fails assets and publishes their events
	Assets  ProcessingAssets
	Jobs    JobQueue
	// Grace is how long an asset must have been unchanged before it is
	// looked at; it must exceed the intake's write-then-enqueue window.
	Grace time.Duration
	// PageSize bounds one read of the store. Defaults to 100.
	PageSize int
}

// ReconcileStats counts what one pass did.
type ReconcileStats struct {
	Checked  int // processing assets older than Grace
	Enqueued int // jobs enqueued again
	Failed   int // assets failed because their job ended (counted also when another node won)
}

// Run makes one pass over the processing assets. It stops at the first
// error of the store or the queue (the next pass starts again).
func (r *Reconciler) Run(ctx context.Context) (ReconcileStats, error) {
	var st ReconcileStats
	limit := r.PageSize
	if limit <= 0 {
		limit = 100
	}
	cutoff := r.Handler.Now().Add(-r.Grace)
	after := ""
	for {
		page, err := r.Assets.Processing(ctx, cutoff, after, limit)
		if err != nil {
			return st, fmt.Errorf("reconcile: %w", err)
		}
		for _, a := range page {
			st.Checked++
			if err := r.check(ctx, a, &st); err != nil {
				return st, err
			}
			after = a.ID
		}
		if len(page) < limit {
			return st, nil
		}
	}
}

func (r *Reconciler) check(ctx context.Context, a *asset.Asset, st *ReconcileStats) error {
	log := r.Handler.Log.With("jobId", a.ProcessingJobID, "assetId", a.ID, "userId", a.UserID)
	info, err := r.Jobs.Get(ctx, a.ProcessingJobID)
	if errors.Is(err, queue.ErrNotFound) {
		job, err := wire.NewJob(ctx, a, r.Handler.Now())
		if err != nil {
			return err
		}
		switch err := r.Jobs.Enqueue(ctx, job); {
		case errors.Is(err, queue.ErrDuplicate):
			// Another node (or the intake, late) enqueued it meanwhile.
		case err != nil:
			return fmt.Errorf("reconcile: enqueue job %s: %w", job.ID, err)
		default:
			log.WarnContext(ctx, "processing asset had no job in the queue; enqueued it again")
			st.Enqueued++
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reconcile: job %s: %w", a.ProcessingJobID, err)
	}
	if info.State != queue.Dead && info.State != queue.Completed {
		return nil
	}
	msg := "the analysis did not finish"
	if e := info.LastError(); e != "" {
		msg += ": " + e
	} else if info.State == queue.Completed {
		msg += ": its job ended without recording a result"
	}
	log.WarnContext(ctx, "job ended and left its asset processing; failing it", "state", info.State)
	job := &queue.Job{ID: info.ID, Payload: info.Payload, Attempt: info.Attempt, MaxAttempts: info.MaxAttempts}
	out := asset.Outcome{Status: asset.StatusFailed, Error: &asset.Error{Code: "job_dead", Message: msg}}
	if err := r.Handler.finish(ctx, log, a, job, out); err != nil {
		return err
	}
	st.Failed++
	return nil
}
