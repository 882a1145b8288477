// Package pipeline is the job handler of the ai-processing queue: it takes a
// job's image from the blob store, has it analysed, records the asset's
// final state and publishes the asset_processed event.
//
// Guarantees, and how they are kept:
//   - Idempotent: a delivery for an asset that is no longer processing under
//     the job's id is acknowledged without work (queue delivery is at least
//     once).
//   - The analyzer is never called inside a database transaction; the final
//     state is one atomic Store.Finish that also records the event as owed
//     (the outbox). The event is published after that commit and the mark is
//     cleared once it is out; Relay re-publishes marks a crash left behind, so
//     an event may repeat (same eventId) but never vanish. A store that
//     appends the event to the event log in Finish's own transaction (the
//     embedded one) leaves nothing owed: the handler publishes it on Bus,
//     and a device that missed it gets it from the log when it reconnects.
//   - Permanent failures (the AI service refused the image, the image cannot
//     be decoded) fail the asset at once; retryable ones are retried by the
//     queue with backoff, honouring the AI service's Retry-After, and the
//     last attempt fails the asset.
//   - An AI outage costs waiting, not attempts: while the Analyzer's
//     circuit breaker (ai.Breaker) is open, or when it takes a failure as
//     part of an outage, the job is snoozed (queue.Snooze) until the next
//     probe, and its asset stays processing with its attempt count.
//   - A job that died without reaching its handler's last step (its worker
//     killed on the last attempt) is found by Reconcile, which fails its
//     asset, so every accepted asset ends draft or failed.
package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/queue"
)

// EventAssetProcessed is the realtime event sent when an asset reaches a
// final state.
const EventAssetProcessed = "asset_processed"

// CodeJobDead is the asset error code of a job that died without its handler
// recording a final state (its worker killed on the last attempt, or a
// store that refused every attempt's outcome).
const CodeJobDead = "job_dead"

// PublishTimeout bounds a handler's own publish of its event (the event log
// append and the bus). One that has not finished by then gives up and leaves
// the event owed for the relay, so a relay that waits longer than
// PublishTimeout after an event's final state never races a live handler
// publishing the same event.
const PublishTimeout = 20 * time.Second

// Store is what the pipeline reads and writes of the asset store.
type Store interface {
	Get(ctx context.Context, id string) (*asset.Asset, error)
	RecordAttempt(ctx context.Context, id, jobID string, attempt int, now time.Time) error
	Finish(ctx context.Context, id, jobID string, out asset.Outcome) (*asset.Asset, error)
	PendingEvents(ctx context.Context, limit int) ([]*asset.Asset, error)
	EventSent(ctx context.Context, id, eventID string, sentAt time.Time) error
}

// Observer receives the handler's measurements (the app's Prometheus
// histograms). Its methods must not block.
type Observer interface {
	// QueueWait: a job's first attempt began wait after its enqueue.
	QueueWait(wait time.Duration)
	// AICall: one attempt's analysis (blob read and AI call) ended after
	// took with outcome (OutcomeOK, …); took is 0 when no call was made.
	AICall(outcome string, took time.Duration)
	// Finished: an asset reached its final state (a carries its timeline
	// and attempts).
	Finished(a *asset.Asset)
	// EventSent: an asset's event went out lag after its final state.
	EventSent(lag time.Duration)
}

// The outcome classes of an attempt's analysis, as Observer.AICall gets them.
const (
	OutcomeOK          = "ok"
	OutcomeRetryable   = "retryable"    // the job is retried (or fails if it was the last attempt)
	OutcomePermanent   = "permanent"    // the asset fails at once
	OutcomeBreakerOpen = "breaker_open" // not called, or counted as part of an outage: the job is snoozed
	OutcomeCanceled    = "canceled"     // shutdown interrupted it
)

// Notifier delivers an event to every connected device of one user.
type Notifier interface {
	Send(ctx context.Context, userID, event string, data any) error
}

// Handler works ai-processing jobs. It implements queue.Handler.
type Handler struct {
	Store    Store
	Blobs    blob.Store
	Analyzer ai.Analyzer
	Notifier Notifier
	// Bus, when set, publishes the events that Store records as sent with
	// their final state: an asset Finish returns with EventPending false has
	// its event in the event log already (the embedded store appends it in
	// Finish's own transaction: sqlitestore.Store.LogEvents), which Notifier
	// would append again, and needs no EventSent. Nil: Notifier publishes
	// every event and EventSent marks it.
	Bus      Notifier
	Log      *slog.Logger
	Now      func() time.Time
	NewID    func() string
	Observer Observer // nil: none
	// Tracer starts the spans of each attempt (see SpanAttempt); nil: no
	// spans, at no cost.
	Tracer trace.Tracer
}

var _ queue.Handler = (*Handler)(nil)

// pauser is an Analyzer that can tell without a request that it would send
// none now (ai.Breaker while the AI service is down), and for how long.
type pauser interface{ Wait() time.Duration }

// Event is the asset_processed payload (api/asset-processed-event.schema.json).
type Event struct {
	EventID     string          `json:"eventId"`
	AssetID     string          `json:"assetId"`
	JobID       string          `json:"jobId"`
	UserID      string          `json:"userId"`
	Status      string          `json:"status"` // completed or failed
	AIMetadata  json.RawMessage `json:"aiMetadata"`
	Error       *asset.Error    `json:"error"`
	Attempts    int             `json:"attempts"`
	ProcessedAt string          `json:"processedAt"`
}

// NewEvent builds the event of an asset's final state.
func NewEvent(a *asset.Asset) Event {
	ev := Event{
		EventID: a.EventID, AssetID: a.ID, JobID: a.ProcessingJobID, UserID: a.UserID,
		Status: "completed", AIMetadata: a.AIMetadata, Error: a.Error, Attempts: a.Attempts,
	}
	if a.Status == asset.StatusFailed {
		ev.Status = "failed"
	}
	if len(ev.AIMetadata) == 0 {
		ev.AIMetadata = json.RawMessage("null")
	}
	// A final state recorded before results were validated (Relay sends
	// it) may hold invalid UTF-8, which a websocket client drops the
	// connection over. Outside strings it is a syntax error, so replacing
	// it keeps the JSON valid.
	if !utf8.Valid(ev.AIMetadata) {
		ev.AIMetadata = bytes.ToValidUTF8(ev.AIMetadata, []byte("\uFFFD"))
	}
	if a.ProcessedAt != nil {
		ev.ProcessedAt = a.ProcessedAt.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	}
	return ev
}

// ProcessJob analyses the job's image and records the outcome, under the
// attempt's span.
func (h *Handler) ProcessJob(ctx context.Context, job *queue.Job) error {
	p, err := DecodePayload(job)
	if err != nil {
		h.Log.ErrorContext(ctx, "undecodable job dropped", "jobId", job.ID, "err", err)
		return queue.Permanent(err)
	}
	ctx, span := h.startAttempt(ctx, job, p)
	err = h.process(ctx, job, p)
	endAttempt(span, job, err)
	return err
}

func (h *Handler) process(ctx context.Context, job *queue.Job, p Payload) error {
	log := h.Log.With("jobId", job.ID, "assetId", p.AssetID, "userId", p.UserID, "attempt", job.Attempt)

	if p, ok := h.Analyzer.(pauser); ok {
		if d := p.Wait(); d > 0 {
			log.DebugContext(ctx, "AI service circuit breaker open; job snoozed", "for", d)
			h.observeAI(OutcomeBreakerOpen, 0)
			return queue.Snooze(errors.New("the AI service circuit breaker is open"), d)
		}
	}
	// RecordAttempt's guard (processing under this job) is the check that
	// this delivery has work to do: no read before it, since on a
	// MongoDB-wire server without usable indexes (FerretDB) every read is
	// a collection scan.
	a := &asset.Asset{ID: p.AssetID}
	if err := h.Store.RecordAttempt(ctx, a.ID, job.ID, job.Attempt, h.Now()); errors.Is(err, asset.ErrNotFound) {
		log.WarnContext(ctx, "job for a missing asset acknowledged")
		return nil
	} else if errors.Is(err, asset.ErrConflict) {
		log.InfoContext(ctx, "repeat delivery acknowledged without work")
		return nil
	} else if err != nil {
		return fmt.Errorf("record attempt: %w", err)
	}

	start := h.Now()
	// The queue wait is the first attempt's, from the payload's stamp (the
	// asset is not read here). A replayed dead job runs its old payload
	// again from attempt 1, so its wait includes the time it lay dead.
	if h.Observer != nil && job.Attempt == 1 && !p.EnqueuedAt.IsZero() {
		h.Observer.QueueWait(start.Sub(p.EnqueuedAt))
	}
	result, err := h.analyze(ctx, p)
	analyzed := h.Now()
	if err == nil {
		log.InfoContext(ctx, "analysis done", "duration", analyzed.Sub(start))
		h.observeAI(OutcomeOK, analyzed.Sub(start))
		return h.finish(ctx, log, a, job, asset.Outcome{Status: asset.StatusDraft, AIMetadata: result, AnalyzedAt: &analyzed})
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		// Shutdown: not the image's fault. The queue puts the job back.
		log.WarnContext(ctx, "analysis interrupted", "err", err)
		h.observeAI(OutcomeCanceled, analyzed.Sub(start))
		return err
	}
	if d, ok := ai.BreakerWait(err); ok {
		log.DebugContext(ctx, "AI service outage; job snoozed", "for", d, "err", err)
		h.observeAI(OutcomeBreakerOpen, analyzed.Sub(start))
		return queue.Snooze(err, d)
	}
	// The job's own deadline counts as a failed attempt like any other;
	// what is left of the work (recording the outcome) must not inherit it.
	ctx = context.WithoutCancel(ctx)

	permanent := ai.IsPermanent(err)
	last := job.Attempt >= job.MaxAttempts
	log.WarnContext(ctx, "analysis failed", "err", err, "code", ai.Code(err), "permanent", permanent, "lastAttempt", last)
	if permanent {
		h.observeAI(OutcomePermanent, analyzed.Sub(start))
	} else {
		h.observeAI(OutcomeRetryable, analyzed.Sub(start))
	}
	if permanent || last {
		// The user sees the code and a message written for users; the
		// cause (a store's or library's text) stays in the log above.
		out := asset.Outcome{Status: asset.StatusFailed, Error: &asset.Error{Code: ai.Code(err), Message: ai.UserMessage(err)},
			AnalyzedAt: &analyzed}
		if ferr := h.finish(ctx, log, a, job, out); ferr != nil {
			return ferr
		}
		if permanent {
			return queue.Permanent(err)
		}
		return err
	}
	if d, ok := ai.RetryAfter(err); ok {
		return queue.RetryAfter(err, d)
	}
	return err
}

func (h *Handler) analyze(ctx context.Context, p Payload) (json.RawMessage, error) {
	bctx, span := h.span(ctx, SpanBlobRead, trace.SpanKindInternal)
	rc, err := h.Blobs.Open(bctx, p.BlobKey)
	endSpan(span, err)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, &ai.Error{Code: ai.CodeImageUnreadable, Message: "the stored image is missing", Permanent: true, Err: err}
	}
	if err != nil {
		return nil, &ai.Error{Code: ai.CodeImageUnreadable, Message: "the stored image cannot be read now", Err: err}
	}
	defer rc.Close()
	actx, span := h.span(ctx, SpanAnalyze, trace.SpanKindClient)
	result, err := h.Analyzer.Analyze(actx, ai.Image{AssetID: p.AssetID, ContentType: p.ContentType, Size: p.Size, Body: rc})
	if err == nil {
		// Whatever the Analyzer, the store gets only a result validated and
		// re-encoded here: a store refusing it would look like a transient
		// failure and have the AI called again on every retry.
		result, err = ai.ParseResponse(result)
	}
	endSpan(span, err)
	if err != nil {
		return nil, err
	}
	return result, nil
}

// finish records the final state with its owed event, then publishes it.
func (h *Handler) finish(ctx context.Context, log *slog.Logger, a *asset.Asset, job *queue.Job, out asset.Outcome) error {
	out.Attempts = job.Attempt
	out.ProcessedAt = h.Now()
	out.EventID = h.NewID()
	done, err := h.Store.Finish(ctx, a.ID, job.ID, out)
	if errors.Is(err, asset.ErrConflict) || errors.Is(err, asset.ErrNotFound) {
		// Another delivery finished it, or it was deleted. A store that
		// reports a conflict for an asset still processing under this job
		// is broken; acknowledging would leave the asset processing for
		// ever, so the job fails and is retried instead.
		if now, gerr := h.Store.Get(ctx, a.ID); gerr == nil && now.Status == asset.StatusProcessing && now.ProcessingJobID == job.ID {
			log.ErrorContext(ctx, "store refused the final state of an asset still processing under this job", "err", err)
			return fmt.Errorf("record outcome: %w", err)
		}
		log.InfoContext(ctx, "asset already final; repeat acknowledged")
		return nil
	}
	if err != nil {
		return fmt.Errorf("record outcome: %w", err)
	}
	log.InfoContext(ctx, "asset final", "status", done.Status, "eventId", done.EventID)
	if h.Observer != nil {
		h.Observer.Finished(done)
	}
	setOutcome(ctx, string(done.Status))
	h.publish(ctx, log, done)
	return nil
}

func (h *Handler) observeAI(outcome string, took time.Duration) {
	if h.Observer != nil {
		h.Observer.AICall(outcome, took)
	}
}

// publish sends the owed event and clears its mark. A failure is logged and
// left to Relay: the mark stays, so the event is not lost. It reports
// whether the event went out.
func (h *Handler) publish(ctx context.Context, log *slog.Logger, a *asset.Asset) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), PublishTimeout)
	defer cancel()
	ctx, span := h.span(ctx, SpanPublish, trace.SpanKindProducer)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("eventId", a.EventID), attribute.String("assetId", a.ID),
			attribute.String("jobId", a.ProcessingJobID), attribute.String("userId", a.UserID), attribute.String("status", string(a.Status)))
	}
	// logged: the store recorded the event as sent with the final state.
	logged := !a.EventPending && h.Bus != nil
	n := h.Notifier
	if logged {
		n = h.Bus
	}
	err := n.Send(ctx, a.UserID, EventAssetProcessed, NewEvent(a))
	endSpan(span, err)
	if err != nil && logged {
		log.WarnContext(ctx, "event not sent live; devices get it from the event log when they reconnect", "eventId", a.EventID, "err", err)
		return false
	}
	if err != nil {
		log.WarnContext(ctx, "event not sent; the relay will retry", "eventId", a.EventID, "err", err)
		return false
	}
	sent := h.Now()
	if !logged {
		if err := h.Store.EventSent(ctx, a.ID, a.EventID, sent); err != nil {
			log.WarnContext(ctx, "event sent but not marked; it may repeat", "eventId", a.EventID, "err", err)
		}
	}
	if h.Observer != nil && a.ProcessedAt != nil {
		h.Observer.EventSent(sent.Sub(*a.ProcessedAt))
	}
	return true
}

// Relay publishes owed events older than minAge: those a crash or a failed
// publish left behind. minAge keeps it from racing a handler that is about to
// publish its own event; 0 is right only when no handler runs.
func (h *Handler) Relay(ctx context.Context, minAge time.Duration) (int, error) {
	pending, err := h.Store.PendingEvents(ctx, 100)
	if err != nil {
		return 0, err
	}
	n := 0
	cutoff := h.Now().Add(-minAge)
	for _, a := range pending {
		if a.UpdatedAt.After(cutoff) {
			continue
		}
		if h.publish(ctx, h.Log.With("assetId", a.ID, "jobId", a.ProcessingJobID, "userId", a.UserID), a) {
			n++
		}
	}
	return n, nil
}

// DeadJobs is what Reconcile reads of the queue.
type DeadJobs interface {
	List(ctx context.Context, state queue.State, limit int) ([]queue.Info, error)
}

// Reconcile fails the asset of every dead job that left it processing: a
// worker killed during a last attempt leaves such a job, which the queue
// marks dead without running the handler again.
func (h *Handler) Reconcile(ctx context.Context, jobs DeadJobs) (int, error) {
	dead, err := jobs.List(ctx, queue.Dead, 1000)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, info := range dead {
		job := &queue.Job{ID: info.ID, Payload: info.Payload, Attempt: info.Attempt, MaxAttempts: info.MaxAttempts}
		p, err := DecodePayload(job)
		if err != nil {
			continue
		}
		a, err := h.Store.Get(ctx, p.AssetID)
		if err != nil || a.Status != asset.StatusProcessing || a.ProcessingJobID != info.ID {
			continue
		}
		// The queue's last error is whatever the handler or the queue wrote
		// (a store's SQL, a panic, a rescue note): it goes to the log, and
		// the user gets a fixed sentence.
		log := h.Log.With("jobId", info.ID, "assetId", a.ID, "userId", a.UserID)
		log.WarnContext(ctx, "dead job left its asset processing; failing it", "lastError", info.LastError())
		msg := fmt.Sprintf("the analysis did not finish after %d attempts", info.Attempt)
		out := asset.Outcome{Status: asset.StatusFailed, Error: &asset.Error{Code: CodeJobDead, Message: msg}}
		if err := h.finish(ctx, log, a, job, out); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
