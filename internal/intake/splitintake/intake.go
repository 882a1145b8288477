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
//
// Keyed uploads (SubmitOnce): the key's entry is reserved (Keys, one atomic
// insert across all api processes) with the response and the asset ids it
// will answer with, then the assets are written and enqueued, then the
// entry is marked done. What a crash can leave, and what the client sees:
//   - before the reservation: nothing; a retry starts afresh.
//   - a reservation whose request died (its process crashed, or it could
//     neither finish nor undo its writes): retries of the key get 409 until
//     the entry's lease (Lease after the request) has passed. The first retry
//     after it decides by the entry's assets, the source of truth: all of
//     them exist → they are the upload (enqueued, or enqueued by the
//     reconciler), the entry is marked done and the retry gets the original
//     202; some → they are deleted (a job of theirs finds no asset and is
//     acknowledged), and the retry proceeds as the first request; none → it
//     proceeds. What guarantees one creation: the lease is longer than the
//     submission's own timeout (submitTimeout), so a live request has stopped
//     writing before its entry can be taken over. A write the store applies
//     after the client's timeout and after the whole lease (a stalled
//     primary) could still add a second copy; nothing bounds that but Lease.
//   - after the writes, before done: the entry holds the response; after
//     the lease a retry finds every asset and replays it.
//
// Leases are compared across api processes by their clocks (the request's
// time plus Lease): those must agree to within seconds.
package splitintake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/idempotency"
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

// Keys is what the intake asks of the idempotency entries (mongokeys).
type Keys interface {
	// Reserve inserts e, pending, and returns nil, or returns the key's
	// entry live at at.
	Reserve(ctx context.Context, e idempotency.Entry, at time.Time) (*idempotency.Entry, error)
	Complete(ctx context.Context, userID, key, token string) error
	Release(ctx context.Context, userID, key, token string) error
}

// Lease is how long a reservation keeps other requests of its key out
// (409) before they may look at what it left (see the package doc).
const Lease = time.Minute

// maxRounds bounds how often one request takes over a dead reservation
// and finds the key taken again.
const maxRounds = 3

// submitTimeout bounds a keyed submission's writes; it is well inside
// Lease, so that they have ended before the reservation can be taken over.
const submitTimeout = 20 * time.Second

// Intake writes assets, then enqueues their jobs.
type Intake struct {
	store Store
	queue Queue
	keys  Keys
	log   *slog.Logger
	now   func() time.Time
	newID func() string
}

// New returns the intake. newID makes event ids (the admin's delete fails
// an asset, which owes its event) and reservation tokens.
func New(store Store, q Queue, keys Keys, newID func() string, log *slog.Logger) *Intake {
	return &Intake{store: store, queue: q, keys: keys, log: log, now: time.Now, newID: newID}
}

// Submit stores the assets, then enqueues their jobs; if the enqueue fails,
// it deletes the assets and returns the error.
func (in *Intake) Submit(ctx context.Context, assets []*asset.Asset) error {
	jobs, err := wire.NewJobs(ctx, assets, in.now())
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

var _ idempotency.Submitter = (*Intake)(nil)

// SubmitOnce is Submit under an idempotency key (idempotency.Submitter);
// see the package doc for what a crash leaves.
func (in *Intake) SubmitOnce(ctx context.Context, assets []*asset.Asset, c idempotency.Claim) (*idempotency.Record, error) {
	ids := make([]string, len(assets))
	for i, a := range assets {
		ids[i] = a.ID
	}
	e := idempotency.Entry{
		Record: idempotency.Record{UserID: c.UserID, Key: c.Key, Fingerprint: c.Fingerprint,
			Response: c.Response, ExpiresAt: c.ExpiresAt()},
		Token: in.newID(), LeaseUntil: c.At.Add(Lease), AssetIDs: ids,
	}
	log := in.log.With("userId", c.UserID, "idempotencyKey", idempotency.LogID(c.UserID, c.Key))
	for round := 0; ; round++ {
		old, err := in.keys.Reserve(ctx, e, c.At)
		if err != nil {
			return nil, err
		}
		if old == nil {
			break
		}
		if round == maxRounds {
			// Other requests keep taking the key over: let the client retry.
			return nil, idempotency.ErrInFlight
		}
		if err := idempotency.Check(&old.Record, c); err != nil {
			return nil, err
		}
		if old.Done {
			return &old.Record, nil
		}
		if old.LeaseUntil.After(c.At) {
			return nil, idempotency.ErrInFlight
		}
		done, err := in.recover(ctx, old, log)
		if err != nil {
			return nil, err
		}
		if done {
			return &old.Record, nil
		}
	}

	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), submitTimeout)
	defer cancel()
	if err := in.Submit(wctx, assets); err != nil {
		// A failed Create may have written some of the assets: remove them
		// before the key is free again, or leave the entry to the lease.
		if derr := in.deleteOwn(wctx, assets); derr != nil {
			log.ErrorContext(ctx, "a keyed upload failed and its assets could not be removed; the key is held until its lease passes",
				"err", derr, "submitErr", err)
		} else if rerr := in.keys.Release(wctx, c.UserID, c.Key, e.Token); rerr != nil {
			log.WarnContext(ctx, "a failed keyed upload could not free its key; it is held until its lease passes", "err", rerr)
		}
		return nil, err
	}
	if err := in.keys.Complete(wctx, c.UserID, c.Key, e.Token); err != nil {
		// The assets are durable and the entry holds their response: a
		// retry after the lease finds them and replays it.
		log.WarnContext(ctx, "a keyed upload's key was not marked done; retries get 409 until its lease passes", "err", err)
	}
	return nil, nil
}

// deleteOwn deletes those of assets that are stored, recognised by their
// blob key (a server-generated key of this request), so that an id another
// upload holds (the reason a Create can fail) is left alone.
func (in *Intake) deleteOwn(ctx context.Context, assets []*asset.Asset) error {
	var own []string
	for _, a := range assets {
		got, err := in.store.Get(ctx, a.ID)
		switch {
		case errors.Is(err, asset.ErrNotFound):
		case err != nil:
			return err
		case got.BlobKey == a.BlobKey:
			own = append(own, a.ID)
		}
	}
	if len(own) == 0 {
		return nil
	}
	return in.store.Delete(ctx, own...)
}

// recover decides the pending entry of a request that died: done (its
// assets all exist; the entry is marked done) or not (any of them were
// deleted and the entry released, so the key is free).
func (in *Intake) recover(ctx context.Context, e *idempotency.Entry, log *slog.Logger) (done bool, err error) {
	var found []string
	for _, id := range e.AssetIDs {
		_, err := in.store.Get(ctx, id)
		switch {
		case errors.Is(err, asset.ErrNotFound):
		case err != nil:
			return false, err
		default:
			found = append(found, id)
		}
	}
	if len(found) > 0 && len(found) == len(e.AssetIDs) {
		if err := in.keys.Complete(ctx, e.UserID, e.Key, e.Token); err != nil {
			return false, err
		}
		log.InfoContext(ctx, "an interrupted keyed upload had stored its assets; its response is replayed", "assetIds", found)
		return true, nil
	}
	if len(found) > 0 {
		if err := in.store.Delete(ctx, found...); err != nil {
			return false, err
		}
	}
	log.InfoContext(ctx, "an interrupted keyed upload left no complete upload; the key is free", "removedAssetIds", found)
	return false, in.keys.Release(ctx, e.UserID, e.Key, e.Token)
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
	job, err := wire.NewJob(ctx, a, now)
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
