package pipeline

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/queue"
)

// Payload is the JSON body of an ai-processing job, as described by
// api/ai-job.schema.json. It carries what the worker needs to find the
// image without reading the asset first.
type Payload struct {
	JobID       string    `json:"jobId"`
	AssetID     string    `json:"assetId"`
	UserID      string    `json:"userId"`
	BlobKey     string    `json:"blobKey"`
	ContentType string    `json:"contentType"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	EnqueuedAt  time.Time `json:"enqueuedAt"`
}

// NewJob builds the ai-processing job for an asset that is processing under
// a.ProcessingJobID.
func NewJob(a *asset.Asset, now time.Time) (queue.Job, error) {
	p := Payload{
		JobID:       a.ProcessingJobID,
		AssetID:     a.ID,
		UserID:      a.UserID,
		BlobKey:     a.BlobKey,
		ContentType: a.ContentType,
		Size:        a.Size,
		SHA256:      a.SHA256,
		EnqueuedAt:  now.UTC(),
	}
	b, err := json.Marshal(p)
	if err != nil {
		return queue.Job{}, fmt.Errorf("pipeline: encode job: %w", err)
	}
	return queue.Job{ID: p.JobID, Queue: queue.AIProcessing, Payload: b, EnqueuedAt: p.EnqueuedAt}, nil
}

// DecodePayload reads a job's payload.
func DecodePayload(job *queue.Job) (Payload, error) {
	var p Payload
	if err := json.Unmarshal(job.Payload, &p); err != nil {
		return p, fmt.Errorf("pipeline: decode job %s: %w", job.ID, err)
	}
	if p.AssetID == "" || p.JobID == "" || p.BlobKey == "" {
		return p, fmt.Errorf("pipeline: job %s: payload lacks assetId, jobId or blobKey", job.ID)
	}
	return p, nil
}
