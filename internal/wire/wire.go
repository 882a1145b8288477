// Package wire holds the types of the contract files in api/ that several
// packages share without depending on each other: the ai-processing job's
// payload (api/ai-job.schema.json) and the timestamp format of the JSON API
// and the events. The intakes build jobs with it, the pipeline reads them.
package wire

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/queue"
)

// TimeFormat is RFC 3339 in UTC with milliseconds, as every timestamp of
// the contract is written.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// FormatTime writes t in TimeFormat.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// CodeJobDeleted is the error code of an asset whose job an operator
// deleted before it finished (asset.Error.Code, and the event's error).
const CodeJobDeleted = "job_deleted"

// JobDeleted is the final state of an asset processing under a job that an
// operator deleted: failed, so that the asset leaves processing, its event
// is owed and its owner may retry it.
func JobDeleted(a *asset.Asset, now time.Time, eventID string) asset.Outcome {
	return asset.Outcome{
		Status: asset.StatusFailed,
		Error: &asset.Error{Code: CodeJobDeleted,
			Message: "an operator deleted the analysis job before it finished; retry to analyse the image again"},
		Attempts:    a.Attempts,
		ProcessedAt: now,
		EventID:     eventID,
	}
}

// JobPayload is the JSON body of an ai-processing job. It carries what the
// worker needs to find the image without reading the asset first.
type JobPayload struct {
	JobID       string    `json:"jobId"`
	AssetID     string    `json:"assetId"`
	UserID      string    `json:"userId"`
	BlobKey     string    `json:"blobKey"`
	ContentType string    `json:"contentType"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	EnqueuedAt  time.Time `json:"enqueuedAt"`
	// Traceparent is the W3C trace context of the request that enqueued
	// the job (version 00), so that its attempts, in whichever process,
	// continue that trace. Empty when tracing is off, and in payloads
	// written before it existed.
	Traceparent string `json:"traceparent,omitempty"`
}

// NewJob builds the ai-processing job of an asset that is processing under
// a.ProcessingJobID. The job's id is that id, so enqueueing it twice is
// refused by the queue (queue.ErrDuplicate) rather than run twice. The
// payload carries the trace context of ctx's span, if it has one.
func NewJob(ctx context.Context, a *asset.Asset, now time.Time) (queue.Job, error) {
	p := JobPayload{
		JobID:       a.ProcessingJobID,
		AssetID:     a.ID,
		UserID:      a.UserID,
		BlobKey:     a.BlobKey,
		ContentType: a.ContentType,
		Size:        a.Size,
		SHA256:      a.SHA256,
		EnqueuedAt:  now.UTC().Truncate(time.Millisecond),
		Traceparent: traceparent(ctx),
	}
	if p.JobID == "" || p.AssetID == "" || p.BlobKey == "" {
		return queue.Job{}, fmt.Errorf("wire: asset %q has no id, job id or blob key", a.ID)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return queue.Job{}, fmt.Errorf("wire: encode job: %w", err)
	}
	return queue.Job{ID: p.JobID, Queue: queue.AIProcessing, Group: group(a.UserID), Payload: b, EnqueuedAt: p.EnqueuedAt}, nil
}

// group is the job's fairness key, the uploader's user id; one the queue
// would refuse (longer than queue.MaxGroupLen, or not UTF-8) is replaced by
// its SHA-256, which keeps the user's jobs together.
func group(userID string) string {
	if len(userID) <= queue.MaxGroupLen && utf8.ValidString(userID) {
		return userID
	}
	sum := sha256.Sum256([]byte(userID))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// traceparent is the W3C traceparent header of ctx's span, or "" without one
// (tracing off: nothing is formatted).
func traceparent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c.Get("traceparent")
}

// NewJobs builds the job of each asset of an upload, in order, and sets
// each asset's EnqueuedAt to its job's enqueuedAt: the intakes call it
// just before the write that makes assets and jobs durable, so that the
// asset row carries the instant its job was stamped. Each job carries the
// traceparent of ctx's span, if any.
func NewJobs(ctx context.Context, assets []*asset.Asset, now time.Time) ([]queue.Job, error) {
	jobs := make([]queue.Job, len(assets))
	for i, a := range assets {
		var err error
		if jobs[i], err = NewJob(ctx, a, now); err != nil {
			return nil, err
		}
	}
	for i, a := range assets {
		at := jobs[i].EnqueuedAt
		a.EnqueuedAt = &at
	}
	return jobs, nil
}

// DecodeJob reads the payload of an ai-processing job.
func DecodeJob(id string, payload json.RawMessage) (JobPayload, error) {
	var p JobPayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return p, fmt.Errorf("wire: decode job %s: %w", id, err)
	}
	if p.AssetID == "" || p.JobID == "" || p.BlobKey == "" {
		return p, fmt.Errorf("wire: job %s: payload lacks assetId, jobId or blobKey", id)
	}
	return p, nil
}
