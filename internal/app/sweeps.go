package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/pipeline"
)

// The sweeps a worker process runs, at start-up and then periodically. Each
// is safe to run on every worker process at once.
const (
	// reconnectGrace delays the first relay: events a crash left owed go
	// out once clients have had time to reconnect (the Socket.IO clients
	// wait about a second).
	reconnectGrace = 3 * time.Second
	// relayEvery and relayAge: owed events are published again every
	// relayEvery, once older than relayAge. relayAge exceeds a handler's
	// own publish bound (pipeline.PublishTimeout) with room for the final
	// write before it, so the relay never repeats an event a live handler
	// is still publishing (measured: on a loaded FerretDB one user's event
	// log appends took over 30 s, and a 30 s relayAge sent them twice).
	relayEvery = 10 * time.Second
	relayAge   = 2*pipeline.PublishTimeout + 20*time.Second
	// reconcileEvery and reconcileGrace: processing assets unchanged for
	// reconcileGrace get their job enqueued again if the queue lost it, or
	// fail if it is dead. The grace covers the split intake's window between
	// writing an asset and enqueueing its job (milliseconds).
	reconcileEvery = 30 * time.Second
	reconcileGrace = 30 * time.Second
	// deadEvery: dead jobs that left their asset processing (a worker killed
	// on a last attempt) are failed at once rather than after the grace.
	deadEvery = 10 * time.Second
	// blobSweepEvery and blobSweepAge: blobs no asset references, and
	// unfinished uploads, are deleted once older than blobSweepAge. It
	// exceeds any upload that keeps moving for an hour; a request still
	// open after that loses its first images, and their assets fail with
	// image_unreadable instead of hanging.
	blobSweepEvery = time.Hour
	blobSweepAge   = time.Hour
	// keyExpireEvery: idempotency records past their 24 h are deleted (an
	// expired one is already ignored; this only frees the space).
	keyExpireEvery = 10 * time.Minute
	// eventExpireEvery: events older than EVENT_RETENTION are deleted (a
	// MongoDB TTL index also does it; FerretDB and SQLite have none).
	eventExpireEvery = eventlog.DefaultExpireEvery
)

// newSweeps builds the worker's sweeps. single: this process is the only
// one on its data (klectr serve, embedded), so at start-up every owed event
// and every unreferenced blob older than its start is a dead process's.
func newSweeps(h *pipeline.Handler, b *backends, single bool, started time.Time, retention time.Duration, log *slog.Logger) []*loop {
	relayFirst := single
	relay := newLoop(reconnectGrace, relayEvery, func(ctx context.Context) {
		age := relayAge
		if relayFirst {
			age, relayFirst = time.Since(started), false
		}
		n, err := h.Relay(ctx, age)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("event relay failed", "err", err)
		case n > 0:
			log.Info("relayed owed events", "events", n)
		}
	})

	dead := newLoop(reconnectGrace, deadEvery, func(ctx context.Context) {
		if _, err := h.Reconcile(ctx, b.queue); err != nil && ctx.Err() == nil {
			log.Warn("dead-job reconcile failed", "err", err)
		}
	})

	rec := &pipeline.Reconciler{Handler: h, Assets: b.store, Jobs: b.queue, Grace: reconcileGrace}
	reconcile := newLoop(reconnectGrace, reconcileEvery, func(ctx context.Context) {
		st, err := rec.Run(ctx)
		if err != nil && ctx.Err() == nil {
			log.Warn("reconcile failed", "err", err)
		}
		if st.Enqueued+st.Failed > 0 {
			log.Info("reconciled processing assets", "checked", st.Checked, "enqueued", st.Enqueued, "failed", st.Failed)
		}
	})

	blobFirst := single
	blobs := newLoop(reconnectGrace, blobSweepEvery, func(ctx context.Context) {
		cutoff := time.Now().Add(-blobSweepAge)
		if blobFirst {
			cutoff, blobFirst = started, false
		}
		n, err := blob.Sweep(ctx, b.blobs, cutoff, b.store.BlobsInUse)
		if err != nil && ctx.Err() == nil {
			log.Warn("orphan blob sweep failed", "err", err)
		}
		if n > 0 {
			log.Info("deleted orphan blobs and unfinished uploads", "deleted", n, "olderThan", cutoff)
		}
	})
	events := newLoop(reconnectGrace, eventExpireEvery, func(ctx context.Context) {
		n, err := b.events.Expire(ctx, time.Now().Add(-retention))
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("event log expiry failed", "err", err)
		case n > 0:
			log.Info("expired events deleted", "count", n, "retention", retention.String())
		}
	})
	loops := []*loop{relay, dead, reconcile, blobs, events}
	if b.expireKeys != nil {
		loops = append(loops, newLoop(reconnectGrace, keyExpireEvery, func(ctx context.Context) {
			if n, err := b.expireKeys(ctx, time.Now()); err != nil && ctx.Err() == nil {
				log.Warn("idempotency key expiry failed", "err", err)
			} else if n > 0 {
				log.Info("expired idempotency keys deleted", "count", n)
			}
		}))
	}
	return loops
}
