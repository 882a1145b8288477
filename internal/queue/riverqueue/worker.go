package riverqueue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"

	"github.com/klectr/klectr/internal/queue"
)

// jobArgs is what a River job carries: our ID, the payload, and the
// enqueue time as the enqueuer gave it.
type jobArgs struct {
	ID         string          `json:"id"`
	Group      string          `json:"group"`
	Payload    json.RawMessage `json:"payload"`
	EnqueuedAt time.Time       `json:"enqueuedAt"`
}

func (jobArgs) Kind() string { return kind }

// worker adapts a queue.Handler to River and translates its outcomes:
// Permanent becomes River's JobCancel (state cancelled, i.e. dead);
// RetryAfter sets the time NextRetry gives River; Snooze becomes River's
// JobSnooze, which in River v0.51 stores the attempt undone (attempt-1,
// max_attempts unchanged) and no error, so the next run has the same
// Attempt.
type worker struct {
	river.WorkerDefaults[jobArgs]
	q *Queue
}

type riverJobKey struct{}

func (w *worker) Work(ctx context.Context, rj *river.Job[jobArgs]) error {
	job := &queue.Job{
		ID:          rj.Args.ID,
		Queue:       rj.Queue,
		Group:       rj.Args.Group,
		Payload:     rj.Args.Payload,
		Attempt:     rj.Attempt,
		MaxAttempts: rj.MaxAttempts,
		EnqueuedAt:  rj.Args.EnqueuedAt,
	}
	err := w.q.cfg.Handler.ProcessJob(context.WithValue(ctx, riverJobKey{}, rj), job)
	if err == nil {
		return nil
	}
	log := w.q.log.With("jobId", job.ID, "queue", job.Queue, "attempt", job.Attempt, "maxAttempts", job.MaxAttempts, "error", err.Error())
	switch {
	case queue.IsPermanent(err):
		log.WarnContext(ctx, "job failed permanently; dead")
		return river.JobCancel(err)
	case isSnooze(err):
		d, _ := queue.SnoozeDelay(err)
		log.DebugContext(ctx, "job snoozed; attempt not counted", "for", d)
		return river.JobSnooze(d)
	case errors.Is(ctx.Err(), context.Canceled) && errors.Is(err, context.Canceled):
		// Most likely Stop cancelled it; River puts it back unattempted.
		log.InfoContext(ctx, "job interrupted")
		return err
	case job.Attempt >= job.MaxAttempts:
		log.WarnContext(ctx, "job failed on its last attempt; dead")
		return err
	}
	if d, ok := queue.RetryDelay(err); ok {
		w.q.retryAt.Store(rj.ID, time.Now().Add(d))
	}
	log.InfoContext(ctx, "job failed; will retry")
	return err
}

func isSnooze(err error) bool {
	_, ok := queue.SnoozeDelay(err)
	return ok
}

// NextRetry is called by River right after Work failed with a retryable
// error.
func (w *worker) NextRetry(rj *river.Job[jobArgs]) time.Time {
	if at, ok := w.q.retryAt.LoadAndDelete(rj.ID); ok {
		return at.(time.Time)
	}
	return time.Now().Add(w.q.cfg.Policy.Delay(rj.Attempt))
}

// CompleteTx marks the job being worked under ctx (a handler's ctx from this
// Queue) completed inside tx, so that the handler's own writes and the job's
// completion commit together. The handler should then return nil. It is an
// optimisation for idempotent handlers, never a requirement.
func (q *Queue) CompleteTx(ctx context.Context, tx *sql.Tx) error {
	rj, ok := ctx.Value(riverJobKey{}).(*river.Job[jobArgs])
	if !ok {
		return errors.New("riverqueue: CompleteTx outside a handler of this queue")
	}
	if _, err := river.JobCompleteTx[*riversqlite.Driver](ctx, tx, rj); err != nil {
		return fmt.Errorf("riverqueue: complete job %s: %w", rj.Args.ID, err)
	}
	return nil
}
