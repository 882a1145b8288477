// Package queue is the backend-neutral job queue: the job, the handler that
// works it, the retry policy, and the Backend contract that the embedded
// (riverqueue) and scale-out backends implement. It imports no backend.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// AIProcessing is the queue of image analyses.
const AIProcessing = "ai-processing"

// Job is one unit of work in a named queue.
type Job struct {
	// ID is assigned by whoever enqueues (a ULID string), is unique within a
	// backend, and is the only id that leaves the backend: admin calls and
	// logs use it.
	ID string
	// Queue names the queue, e.g. AIProcessing.
	Queue string
	// Group is the fairness key: jobs of one group (the uploader's user id)
	// share the queue fairly with other groups (see Backend). "" is a group
	// like any other, shared by every job enqueued without one. At most
	// MaxGroupLen bytes of UTF-8; the handler gets it as enqueued.
	Group string
	// Payload is opaque to the queue. It must be one JSON value; a backend
	// may re-encode it (whitespace), but keeps the value.
	Payload json.RawMessage
	// Attempt is 1 on the first run; set by the backend on delivery.
	Attempt int
	// MaxAttempts is Retries+1 of the Policy in force when the job was
	// enqueued (or replayed); set by the backend on delivery.
	MaxAttempts int
	// EnqueuedAt is set by the enqueuer; a zero value is replaced by the
	// time of the Enqueue call.
	EnqueuedAt time.Time
}

// Validate reports a job that no backend may accept.
func (j *Job) Validate() error {
	switch {
	case j.ID == "":
		return errors.New("queue: job has no ID")
	case j.Queue == "":
		return fmt.Errorf("queue: job %s has no queue", j.ID)
	case !json.Valid(j.Payload):
		return fmt.Errorf("queue: job %s: payload is not one JSON value", j.ID)
	case len(j.Group) > MaxGroupLen || !utf8.ValidString(j.Group):
		return fmt.Errorf("queue: job %s: group is not at most %d bytes of UTF-8", j.ID, MaxGroupLen)
	}
	return nil
}

// MaxGroupLen bounds Job.Group.
const MaxGroupLen = 256

// FairBurst is how many jobs of a group may wait in the first tier (see
// Backend): a job enqueued while fewer than FairBurst jobs of its group wait
// is in tier 1.
const FairBurst = 4

// FairTiers is the number of tiers; backends serve a lower tier first.
const FairTiers = 4

// FairTier is the tier of a job enqueued while backlog jobs of its group
// wait: 1 below FairBurst, 2 below 8·FairBurst, 3 below 64·FairBurst, 4
// beyond. A backend gives the job the larger of this and the highest tier
// of the group's waiting jobs, so that a group's jobs never overtake each
// other.
func FairTier(backlog int) int {
	switch {
	case backlog < FairBurst:
		return 1
	case backlog < 8*FairBurst:
		return 2
	case backlog < 64*FairBurst:
		return 3
	}
	return 4
}

// Handler works jobs. It is shaped like net/http's: a backend calls
// ProcessJob once per delivery, from several goroutines at once (up to the
// backend's concurrency limit), with a ctx that is cancelled when the job's
// timeout passes or when Stop's deadline ends. A handler must honour ctx and
// must be idempotent: delivery is at least once.
//
// What ProcessJob returns decides the job's fate:
//   - nil: completed.
//   - Permanent(err): dead at once, without further attempts.
//   - RetryAfter(err, d): retried no earlier than d from now; the failed
//     run still counts as an attempt, so the last attempt ends dead.
//   - Snooze(err, d): waits again and runs no earlier than d from now, and
//     the run does not count as an attempt: the next delivery has the same
//     Attempt, Info.Attempt and Info.State are as before the run, no error
//     is recorded, and however often a job snoozes it never ends dead for
//     it. For a handler that did not try (the AI service is known to be
//     down), not for a failed attempt.
//   - any other error, or a panic (which the backend recovers): retried
//     after the Policy's Delay until MaxAttempts attempts have run, then
//     dead.
//   - an error that wraps context.Canceled returned because Stop cancelled
//     ctx: the job is put back as it was before the run (it may or may not
//     count as an attempt, depending on the backend) and runs again after the
//     next Start.
type Handler interface {
	ProcessJob(ctx context.Context, job *Job) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, job *Job) error

// ProcessJob calls f(ctx, job).
func (f HandlerFunc) ProcessJob(ctx context.Context, job *Job) error { return f(ctx, job) }

// State is where a job stands, the same for every backend.
type State string

const (
	// Pending: waiting for its first attempt (or put back unattempted).
	Pending State = "pending"
	// Active: a handler is running it now (or its worker died mid-run and
	// the backend has not yet noticed).
	Active State = "active"
	// Retrying: at least one attempt failed; waiting for the next one.
	Retrying State = "retrying"
	// Completed: a handler returned nil. Backends may expire completed jobs
	// after a retention period.
	Completed State = "completed"
	// Dead: the last attempt failed, or a handler returned Permanent. Kept
	// until deleted, never expired.
	Dead State = "dead"
)

// States lists every State, in lifecycle order.
func States() []State { return []State{Pending, Active, Retrying, Completed, Dead} }

// Valid reports whether s is one of States.
func (s State) Valid() bool {
	switch s {
	case Pending, Active, Retrying, Completed, Dead:
		return true
	}
	return false
}

// Info is what a backend tells about one job.
type Info struct {
	ID          string
	Queue       string
	State       State
	Attempt     int // attempts started so far (0 before the first)
	MaxAttempts int
	Payload     json.RawMessage
	// Errors holds the message of each failed attempt, oldest first. A
	// replayed job keeps the errors of its earlier life.
	Errors     []string
	EnqueuedAt time.Time
	// FinishedAt is when the job became completed or dead; nil otherwise.
	FinishedAt *time.Time
}

// LastError is the newest of Errors, or "".
func (i *Info) LastError() string {
	if len(i.Errors) == 0 {
		return ""
	}
	return i.Errors[len(i.Errors)-1]
}

var (
	// ErrNotFound: no job has that ID (it never existed, was deleted, or,
	// if completed, has expired).
	ErrNotFound = errors.New("queue: job not found")
	// ErrNotDead: Retry was asked for a job that is not dead.
	ErrNotDead = errors.New("queue: job is not dead")
	// ErrActive: Delete was asked for a job that a handler is running.
	ErrActive = errors.New("queue: job is active")
	// ErrDuplicate: Enqueue was given an ID that the backend already holds.
	ErrDuplicate = errors.New("queue: job ID already exists")
)

// Backend stores jobs and, when given a Handler, works them. Every
// implementation passes queuetest.TestBackend.
//
// Contract:
//   - Enqueue stores all the jobs or none (ErrDuplicate if an ID exists,
//     an error for a job that fails Job.Validate); once it returns nil the
//     jobs are durable. It works whether or not the backend was started,
//     so enqueue-only processes never call Start.
//   - Delivery is at least once. A job whose worker died mid-run (crash,
//     kill -9) runs again, and that run counts as an attempt, so a job that
//     kills its worker every time ends dead instead of looping. How fast it
//     runs again is the backend's to document (seconds, not hours).
//   - At most the configured concurrency of handlers run at once per queue
//     per process.
//   - Fairness between groups (Job.Group). A group's backlog in a queue is
//     its jobs that wait for their first attempt (enqueued or replayed, not
//     yet started). A job is put in a tier by its group's backlog at
//     Enqueue, in the same atomic step (FairTier: 1 for a backlog below
//     FairBurst, worse for deeper ones, and never better than the group's
//     waiting jobs), and waiting first attempts start lowest tier first,
//     oldest first within a tier. Guaranteed: after Enqueue returns a job
//     of a group with nothing waiting, at most C + FairBurst·G other jobs
//     start before it, where C is the concurrency of all the processes
//     working the queue together (jobs fetched before it was stored) and G
//     the number of other groups with jobs waiting, not counting the retries
//     of jobs that had started. So another group's batch of any size delays
//     it by a few jobs, not by the batch.
//     Not guaranteed: round-robin between backlogged groups (tiers are
//     coarse: two groups with deep backlogs share tier 4 first come first
//     served); any bound for jobs in tiers 2 to 4, which wait as long as
//     lower tiers keep every worker busy; the tier of retries (a job keeps
//     the tier it was enqueued in).
//   - Order: a group's first attempts start in the order they were enqueued
//     (with concurrency 1, exactly; with more, they are fetched in that
//     order and run side by side). One exception, where a backend's fetch
//     looks at the tiers one after another (redisqueue): an idle worker
//     that is between tiers while one Enqueue stores a group's jobs in
//     several tiers may start one job of a worse tier first. Retries run
//     when due, in no promised order, and jobs of different groups in no
//     promised order.
//   - Retries follow the Handler's documented outcomes and the Policy.
//   - Dead jobs are kept, listed and counted until Delete; they never
//     expire. Retry replays one: it becomes pending with a fresh attempt
//     budget (Attempt starts again at 1) and keeps its ID and payload.
//   - Start begins working if the backend was given a Handler, and does
//     nothing otherwise. ctx bounds start-up only: Stop, not ctx, ends the
//     work.
//   - Stop stops fetching, lets running handlers finish until ctx ends, then
//     cancels their ctx and waits briefly for them to return; an
//     interrupted job is not lost (see Handler). When Stop returns, the
//     outcome of every handler that returned is recorded. Stop is
//     idempotent and safe without Start.
//   - Counts has a key for every State (zero included), across queues.
//   - List returns up to limit jobs in a state, newest enqueued first; a
//     limit <= 0 means 100.
//   - Get, Retry and Delete take the job's ID: ErrNotFound for an unknown
//     one; Retry returns ErrNotDead unless the job is dead; Delete removes a
//     job in any state but active (ErrActive).
type Backend interface {
	Enqueue(ctx context.Context, jobs ...Job) error
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Counts(ctx context.Context) (map[State]int, error)
	List(ctx context.Context, state State, limit int) ([]Info, error)
	Get(ctx context.Context, id string) (Info, error)
	Retry(ctx context.Context, id string) error
	Delete(ctx context.Context, id string) error
}
