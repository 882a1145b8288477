// Package splitintake is the intake of the scale-out shape, where the assets
// (an asset.Store, e.g. MongoDB) and the jobs (a queue.Backend, e.g. Redis)
// share no transaction.
//
// The asset document is the source of truth. Submit writes the assets first
// (processing, each under its job id), then enqueues their jobs; when the
// enqueue fails it deletes the assets again (compensation) and returns an
// error, so the client is told nothing was accepted (503 unavailable).
//
// What a crash can leave, and what repairs it:
//   - between the asset write and the enqueue (or when the compensating
//     delete fails too): assets processing under a job the queue does not
//     know. The reconciler (pipeline.Reconciler) re-enqueues the same job id
//     once the asset has not changed for its grace period. The client got no
//     202 and its blobs may be gone; the job then fails the asset
//     (image_unreadable) and its event is sent, so it still ends failed.
//   - an enqueue that succeeded although it reported an error (a timeout
//     after Redis took the job): the assets are deleted and the job finds no
//     asset, which the handler acknowledges without work.
package splitintake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// Store is what the intake writes of the asset store.
type Store interface {
	Create(ctx context.Context, assets ...*asset.Asset) error
	Get(ctx context.Context, id string) (*asset.Asset, error)
	Reprocess(ctx context.Context, id, newJobID string, now time.Time) (*asset.Asset, error)
	Finish(ctx context.Context, id, jobID string, out asset.Outcome) (*asset.Asset, error)
	Delete(ctx context.Context, ids ...string) error
}

// Queue is what the intake asks of the queue.
type Queue interface {
	Enqueue(ctx context.Context, jobs ...queue.Job) error
	Get(ctx context.Context, id string) (queue.Info, error)
	Retry(ctx context.Context, id string) error
	Delete(ctx context.Context, id string) error
}

// Intake writes assets, then enqueues their jobs.
type Intake struct {
	store Store
	queue Queue
	log   *slog.Logger
	now   func() time.Time
	newID func() string
}

// New returns the intake. newID makes event ids (the admin's delete fails
// an asset, which owes its event).
func New(store Store, q Queue, newID func() string, log *slog.Logger) *Intake {
	return &Intake{store: store, queue: q, log: log, now: time.Now, newID: newID}
}

// Submit stores the assets, then enqueues their jobs; if the enqueue fails,
// it deletes the assets and returns the error.
func (in *Intake) Submit(ctx context.Context, assets []*asset.Asset) error {
	jobs, err := wire.NewJobs(assets, in.now())
	if err != nil {
		return err
	}
	if err := in.store.Create(ctx, assets...); err != nil {
		return err
	}
	qerr := in.queue.Enqueue(ctx, jobs...)
	if qerr == nil {
		return nil
	}
	ids := make([]string, len(assets))
	for i, a := range assets {
		ids[i] = a.ID
	}
	if err := in.store.Delete(context.WithoutCancel(ctx), ids...); err != nil {
		// The reconciler re-enqueues them: they end draft or failed.
		in.log.ErrorContext(ctx, "enqueue failed and its assets could not be removed; the reconciler will enqueue them",
			"assetIds", ids, "err", err, "enqueueErr", qerr)
	}
	return fmt.Errorf("splitintake: enqueue: %w", qerr)
}

// Resubmit moves a failed asset back to processing under newJobID, then
// enqueues that job. Once the asset is processing the request has
// succeeded: an enqueue that fails is logged and left to the reconciler,
// which enqueues the same job id (undoing the asset instead would need a
// final state and an event the user did not cause).
func (in *Intake) Resubmit(ctx context.Context, assetID, newJobID string) (*asset.Asset, error) {
	now := in.now()
	a, err := in.store.Reprocess(ctx, assetID, newJobID, now)
	if err != nil {
		return nil, err
	}
	job, err := wire.NewJob(a, now)
	if err != nil {
		return nil, err
	}
	if err := in.queue.Enqueue(ctx, job); err != nil && !errors.Is(err, queue.ErrDuplicate) {
		in.log.WarnContext(ctx, "retry's job not enqueued; the reconciler will enqueue it",
			"assetId", a.ID, "jobId", job.ID, "userId", a.UserID, "err", err)
	}
	return a, nil
}

// Replay runs a dead job again: its asset goes back to processing under the
// job's id first, then the job is replayed. A crash between the two leaves
// the asset processing under a dead job, which the reconciler fails again
// (job_dead, with its event): the replay is lost, the asset is not.
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
	// ErrNotFound: the asset is gone, and the handler will acknowledge the
	// job. ErrConflict: it is not failed (e.g. a user retry gave it a new
	// job), and the handler will acknowledge this one.
	_, err = in.store.Reprocess(ctx, p.AssetID, jobID, in.now())
	if err != nil && !errors.Is(err, asset.ErrNotFound) && !errors.Is(err, asset.ErrConflict) {
		return err
	}
	return in.queue.Retry(ctx, jobID)
}

// DeleteJob deletes a job that is not running (queue.ErrActive if it is,
// queue.ErrNotFound if there is none), failing its asset first if the asset
// is still processing under it (wire.CodeJobDeleted, its event owed). A
// crash between the two leaves a failed asset and its job, which the
// handler then acknowledges without work; a job that starts running in
// between is refused (ErrActive) and likewise acknowledged.
func (in *Intake) DeleteJob(ctx context.Context, jobID string) error {
	info, err := in.queue.Get(ctx, jobID)
	if err != nil {
		return err
	}
	if info.State == queue.Active {
		return fmt.Errorf("splitintake: delete job %s: %w", jobID, queue.ErrActive)
	}
	if p, err := wire.DecodeJob(info.ID, info.Payload); err == nil {
		a, err := in.store.Get(ctx, p.AssetID)
		switch {
		case errors.Is(err, asset.ErrNotFound):
		case err != nil:
			return err
		case a.Status == asset.StatusProcessing && a.ProcessingJobID == jobID:
			_, err := in.store.Finish(ctx, a.ID, jobID, wire.JobDeleted(a, in.now(), in.newID()))
			if err != nil && !errors.Is(err, asset.ErrConflict) && !errors.Is(err, asset.ErrNotFound) {
				return err
			}
		}
	}
	return in.queue.Delete(ctx, jobID)
}
