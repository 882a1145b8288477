package riverqueue

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"

	"github.com/klectr/klectr/internal/queue"
)

// River's states in ours. River makes a job whose retry is due within 5 s
// available at once (with a future scheduled_at), so "retrying" is told by
// the attempt count, not by River's retryable state: a job not running and
// not finalised is retrying once an attempt has started, pending before.
// River puts a job interrupted by Stop back with its attempt undone, so it
// shows as it was before.
func stateOf(row *rivertype.JobRow) queue.State {
	switch row.State {
	case rivertype.JobStateRunning:
		return queue.Active
	case rivertype.JobStateCompleted:
		return queue.Completed
	case rivertype.JobStateDiscarded, rivertype.JobStateCancelled:
		return queue.Dead
	}
	if row.Attempt > 0 {
		return queue.Retrying
	}
	return queue.Pending
}

// stateSQL is stateOf in SQL, and stateWhere its inverse; keep the three
// in step.
const stateSQL = `CASE
	WHEN state = 'running' THEN 'active'
	WHEN state = 'completed' THEN 'completed'
	WHEN state IN ('discarded', 'cancelled') THEN 'dead'
	WHEN attempt > 0 THEN 'retrying'
	ELSE 'pending' END`

const waitingStates = `state IN ('available', 'scheduled', 'pending', 'retryable')`

func stateWhere(s queue.State) (string, bool) {
	switch s {
	case queue.Pending:
		return waitingStates + ` AND attempt = 0`, true
	case queue.Retrying:
		return waitingStates + ` AND attempt > 0`, true
	case queue.Active:
		return `state = 'running'`, true
	case queue.Completed:
		return `state = 'completed'`, true
	case queue.Dead:
		return `state IN ('discarded', 'cancelled')`, true
	}
	return "", false
}

// Counts counts jobs by state over all queues. It reads through the
// read-only pool and never waits for the writer.
func (q *Queue) Counts(ctx context.Context) (map[queue.State]int, error) {
	rows, err := q.db.Read.QueryContext(ctx,
		`SELECT `+stateSQL+` AS s, count(*) FROM river_job WHERE kind = ? GROUP BY s`, kind)
	if err != nil {
		return nil, fmt.Errorf("riverqueue: counts: %w", err)
	}
	defer rows.Close()
	counts := make(map[queue.State]int, 5)
	for _, s := range queue.States() {
		counts[s] = 0
	}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("riverqueue: counts: %w", err)
		}
		counts[queue.State(s)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("riverqueue: counts: %w", err)
	}
	return counts, nil
}

// List returns up to limit jobs in state, newest enqueued first.
func (q *Queue) List(ctx context.Context, state queue.State, limit int) ([]queue.Info, error) {
	where, ok := stateWhere(state)
	if !ok {
		return nil, fmt.Errorf("riverqueue: list: unknown state %q", state)
	}
	if limit <= 0 {
		limit = 100
	}
	rows, err := q.db.Read.QueryContext(ctx,
		`SELECT id FROM river_job WHERE kind = ? AND `+where+` ORDER BY id DESC LIMIT ?`, kind, limit)
	if err != nil {
		return nil, fmt.Errorf("riverqueue: list: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("riverqueue: list: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("riverqueue: list: %w", err)
	}
	if len(ids) == 0 {
		return []queue.Info{}, nil
	}
	jobs, err := q.reader.JobGetByIDMany(ctx, &riverdriver.JobGetByIDManyParams{ID: ids})
	if err != nil {
		return nil, fmt.Errorf("riverqueue: list: %w", err)
	}
	// The state may have moved on between the two reads; keep only jobs
	// still in the state asked for, newest first.
	slices.SortFunc(jobs, func(a, b *rivertype.JobRow) int { return cmp.Compare(b.ID, a.ID) })
	infos := make([]queue.Info, 0, len(jobs))
	for _, j := range jobs {
		info, err := infoOf(j)
		if err != nil {
			return nil, err
		}
		if info.State == state {
			infos = append(infos, info)
		}
	}
	return infos, nil
}

// Get returns one job by our ID.
func (q *Queue) Get(ctx context.Context, id string) (queue.Info, error) {
	var rid int64
	err := q.db.Read.QueryRowContext(ctx, findByID, kind, id).Scan(&rid, new(string))
	if errors.Is(err, sql.ErrNoRows) {
		return queue.Info{}, fmt.Errorf("riverqueue: job %s: %w", id, queue.ErrNotFound)
	}
	if err != nil {
		return queue.Info{}, fmt.Errorf("riverqueue: get job %s: %w", id, err)
	}
	row, err := q.reader.JobGetByID(ctx, &riverdriver.JobGetByIDParams{ID: rid})
	if errors.Is(err, rivertype.ErrNotFound) {
		return queue.Info{}, fmt.Errorf("riverqueue: job %s: %w", id, queue.ErrNotFound)
	}
	if err != nil {
		return queue.Info{}, fmt.Errorf("riverqueue: get job %s: %w", id, err)
	}
	return infoOf(row)
}

// findByID uses the klectr_river_job_id index: same expression, same
// partial-index condition.
const findByID = `SELECT id, state FROM river_job WHERE kind = ? AND json_extract(args, '$.id') = ?`

// Retry replays a dead job: available now, Attempt back to 0 and
// MaxAttempts from this Queue's Policy. Its ID, payload and error history
// stay.
func (q *Queue) Retry(ctx context.Context, id string) error {
	return q.db.InTx(ctx, func(tx *sql.Tx) error { return q.RetryTx(ctx, tx, id) })
}

// RetryTx is Retry inside the caller's transaction on db.Write, so that an
// operator's replay can reset the job's asset in the same commit.
func (q *Queue) RetryTx(ctx context.Context, tx *sql.Tx, id string) error {
	rid, state, err := lookup(ctx, tx, id)
	if err != nil {
		return err
	}
	if state != string(rivertype.JobStateDiscarded) && state != string(rivertype.JobStateCancelled) {
		return fmt.Errorf("riverqueue: retry job %s: %w", id, queue.ErrNotDead)
	}
	// Replayed, it waits for a first attempt again: its tier is that of a
	// job of its group enqueued now.
	var qname, group string
	err = tx.QueryRowContext(ctx, `SELECT queue, ifnull(json_extract(args, '$.group'), '') FROM river_job WHERE id = ?`, rid).Scan(&qname, &group)
	if err != nil {
		return fmt.Errorf("riverqueue: retry job %s: %w", id, err)
	}
	tier, err := tiers{}.next(ctx, tx, qname, group)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE river_job SET
			state = 'available',
			priority = ?,
			attempt = 0,
			max_attempts = ?,
			finalized_at = NULL,
			scheduled_at = datetime('now', 'subsec'),
			metadata = jsonb_remove(metadata, '$.cancel_attempted_at')
		WHERE id = ?`, tier, q.cfg.Policy.MaxAttempts(), rid)
	if err != nil {
		return fmt.Errorf("riverqueue: retry job %s: %w", id, err)
	}
	return nil
}

// Delete removes a job that is not running.
func (q *Queue) Delete(ctx context.Context, id string) error {
	return q.db.InTx(ctx, func(tx *sql.Tx) error { return q.DeleteTx(ctx, tx, id) })
}

// DeleteTx is Delete inside the caller's transaction on db.Write, so that
// an operator's deletion can fail the job's asset in the same commit.
func (q *Queue) DeleteTx(ctx context.Context, tx *sql.Tx, id string) error {
	rid, state, err := lookup(ctx, tx, id)
	if err != nil {
		return err
	}
	if state == string(rivertype.JobStateRunning) {
		return fmt.Errorf("riverqueue: delete job %s: %w", id, queue.ErrActive)
	}
	if _, err := q.client.JobDeleteTx(ctx, tx, rid); err != nil {
		return fmt.Errorf("riverqueue: delete job %s: %w", id, err)
	}
	return nil
}

func lookup(ctx context.Context, tx *sql.Tx, id string) (int64, string, error) {
	var rid int64
	var state string
	err := tx.QueryRowContext(ctx, findByID, kind, id).Scan(&rid, &state)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", fmt.Errorf("riverqueue: job %s: %w", id, queue.ErrNotFound)
	}
	if err != nil {
		return 0, "", fmt.Errorf("riverqueue: find job %s: %w", id, err)
	}
	return rid, state, nil
}

func infoOf(row *rivertype.JobRow) (queue.Info, error) {
	var a jobArgs
	if err := json.Unmarshal(row.EncodedArgs, &a); err != nil {
		return queue.Info{}, fmt.Errorf("riverqueue: job %d: decode args: %w", row.ID, err)
	}
	errs := make([]string, len(row.Errors))
	for i, e := range row.Errors {
		// River's JobCancel (our Permanent) prefixes the message.
		errs[i] = strings.TrimPrefix(e.Error, "JobCancelError: ")
	}
	return queue.Info{
		ID:          a.ID,
		Queue:       row.Queue,
		State:       stateOf(row),
		Attempt:     row.Attempt,
		MaxAttempts: row.MaxAttempts,
		Payload:     a.Payload,
		Errors:      errs,
		EnqueuedAt:  a.EnqueuedAt,
		FinishedAt:  row.FinalizedAt,
	}, nil
}
