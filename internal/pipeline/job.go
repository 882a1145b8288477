package pipeline

import (
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// Payload is what the handler reads of a job: the contract's payload, which
// the intakes build (wire.NewJob).
type Payload = wire.JobPayload

// DecodePayload reads a job's payload.
func DecodePayload(job *queue.Job) (Payload, error) { return wire.DecodeJob(job.ID, job.Payload) }
