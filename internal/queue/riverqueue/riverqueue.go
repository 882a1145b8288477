// Package riverqueue is the embedded queue backend: River
// (github.com/riverqueue/river) on its SQLite driver, in the same SQLite file
// as the assets, so that an upload's asset row and its job commit in one
// transaction (EnqueueTx).
//
// River's SQLite driver is early-testing upstream; queuetest.TestBackend and
// this package's crash and atomicity tests are what we rely on.
//
// Things this package does that River alone would not:
//   - dead jobs (River's discarded and cancelled) are never deleted by River's
//     cleaner: both retention periods are disabled;
//   - our job IDs (ULIDs) are the only IDs outside: each River job carries
//     ours in its args, found through a unique index this package adds to
//     river_job;
//   - Retry gives a dead job a fresh attempt budget (River's own retry only
//     adds one attempt);
//   - fairness between groups (queue.Backend): a job's River priority is
//     its tier, from its group's backlog counted in the enqueue's
//     transaction (fair.go); River fetches by priority, then age;
//   - RecoverOnStart makes the jobs a dead process left running available
//     again at Start, instead of after River's stuck-job rescue (at least
//     RescueStuckJobsAfter plus up to 30 s).
package riverqueue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

var _ queue.Backend = (*Queue)(nil)

// kind is the River job kind of every job this package inserts.
const kind = "klectr"

// Config configures a Queue. The zero value of each field means its default.
type Config struct {
	// Handler works the jobs. Nil makes an enqueue-only Queue (klectr api):
	// Start does nothing and all the other methods work.
	Handler queue.Handler
	// Queues are the queue names this process works. Default
	// [queue.AIProcessing]. Jobs of any queue name can be enqueued.
	Queues []string
	// Policy decides retries and backoff. Default queue.DefaultPolicy(). It
	// also fixes MaxAttempts of the jobs this Queue enqueues or replays, so
	// enqueue-only processes must be given the same Policy as workers.
	Policy queue.Policy
	// Concurrency is the most jobs run at once, per queue. Default 16.
	Concurrency int
	// JobTimeout bounds one attempt: its ctx is cancelled after it, and the
	// attempt fails (and is retried). Default 1 minute.
	JobTimeout time.Duration
	// RescueAfter is how long a job may stay running before River's rescuer
	// (run every 30 s by the elected leader) treats its worker as dead and
	// retries it. It must exceed JobTimeout. Default JobTimeout + 1 minute.
	RescueAfter time.Duration
	// RecoverOnStart, for a process that is the only worker on this SQLite
	// file (klectr serve, or a single klectr worker): at Start, every job
	// left running is taken to be a dead process's and is made available
	// again at once (or dead, if that was its last attempt, so that a job
	// that kills its worker cannot loop), and a dead process's River
	// leadership is dropped so that maintenance resumes at once. Never set it
	// when two processes work the same file: it would rerun the other's
	// running jobs.
	RecoverOnStart bool
	// StopGrace is how long Stop waits for handlers to return after it
	// cancels them. Default 5 s.
	StopGrace time.Duration
	// FetchPollInterval and FetchCooldown tune how soon River notices new
	// jobs. Defaults 200 ms and 5 ms: a worker that frees a slot waits at most
	// FetchCooldown for the fetch that fills it (measured with 50 workers and
	// the AI at 50 ms: 620 jobs/s at 20 ms, 710–720 at 5 ms).
	FetchPollInterval time.Duration
	FetchCooldown     time.Duration
	// CompletedRetention is how long completed jobs are kept. Default 24 h;
	// -1 keeps them forever. Dead jobs are always kept until deleted.
	CompletedRetention time.Duration
	// Logger receives this package's and River's logs. Default: discarded.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Policy == (queue.Policy{}) {
		c.Policy = queue.DefaultPolicy()
	}
	if err := c.Policy.Validate(); err != nil {
		return c, fmt.Errorf("riverqueue: %w", err)
	}
	if len(c.Queues) == 0 {
		c.Queues = []string{queue.AIProcessing}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 16
	}
	if c.JobTimeout == 0 {
		c.JobTimeout = time.Minute
	}
	if c.RescueAfter == 0 {
		c.RescueAfter = c.JobTimeout + time.Minute
	}
	if c.StopGrace == 0 {
		c.StopGrace = 5 * time.Second
	}
	if c.FetchPollInterval == 0 {
		c.FetchPollInterval = 200 * time.Millisecond
	}
	if c.FetchCooldown == 0 {
		c.FetchCooldown = 5 * time.Millisecond
	}
	if c.CompletedRetention == 0 {
		c.CompletedRetention = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Concurrency < 1:
		return c, errors.New("riverqueue: concurrency must be at least 1")
	case c.JobTimeout < 0:
		return c, errors.New("riverqueue: job timeout must be positive")
	case c.RescueAfter <= c.JobTimeout:
		return c, errors.New("riverqueue: rescue-after must exceed the job timeout")
	case c.StopGrace < 0:
		return c, errors.New("riverqueue: stop grace must not be negative")
	case c.FetchCooldown > c.FetchPollInterval:
		return c, errors.New("riverqueue: fetch cooldown must not exceed the poll interval")
	case c.CompletedRetention < -1:
		return c, errors.New("riverqueue: completed retention must be positive or -1")
	}
	return c, nil
}

// Queue is the River backend. Build it with New; Start it to work jobs; Stop
// it before closing the database.
type Queue struct {
	db     *sqlitedb.DB
	cfg    Config
	driver *riversqlite.Driver
	client *river.Client[*sql.Tx]
	reader riverdriver.Executor // River's queries over the read-only pool
	log    *slog.Logger

	// retryAt carries a RetryAfter delay from Work to NextRetry, which River
	// calls right after Work returns, in the same process (River job id →
	// time).
	retryAt sync.Map

	mu      sync.Mutex
	started bool
	stopped bool
}

// New migrates River's tables in db (idempotent; safe for several processes
// at once) and returns a Queue over it. New starts nothing.
func New(ctx context.Context, db *sqlitedb.DB, cfg Config) (*Queue, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	q := &Queue{
		db:     db,
		cfg:    cfg,
		driver: riversqlite.New(db.Write),
		reader: riversqlite.New(db.Read).GetExecutor(),
		log:    cfg.Logger,
	}
	if err := q.migrate(ctx); err != nil {
		return nil, err
	}
	rc := q.riverConfig()
	q.client, err = river.NewClient(q.driver, rc)
	if err != nil {
		return nil, fmt.Errorf("riverqueue: %w", err)
	}
	return q, nil
}

// idIndex makes our job ID unique and fast to find. River's migrations never
// touch it; one that rebuilt river_job would drop it, and New would build it
// again.
const (
	idIndexName = "klectr_river_job_id"
	idIndex     = `CREATE UNIQUE INDEX IF NOT EXISTS ` + idIndexName + `
	ON river_job (json_extract(args, '$.id')) WHERE kind = 'klectr'`
)

// migrate runs River's migrations and adds our index, in one BEGIN
// IMMEDIATE transaction so that two processes starting together take turns.
func (q *Queue) migrate(ctx context.Context) error {
	m, err := rivermigrate.New(q.driver, &rivermigrate.Config{Logger: q.log})
	if err != nil {
		return fmt.Errorf("riverqueue: migrate: %w", err)
	}
	return q.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := m.MigrateTx(ctx, tx, rivermigrate.DirectionUp, nil); err != nil {
			return fmt.Errorf("riverqueue: migrate: %w", err)
		}
		if _, err := tx.ExecContext(ctx, idIndex); err != nil {
			return fmt.Errorf("riverqueue: create job id index: %w", err)
		}
		if _, err := tx.ExecContext(ctx, groupIndex); err != nil {
			return fmt.Errorf("riverqueue: create job group index: %w", err)
		}
		return nil
	})
}

func (q *Queue) riverConfig() *river.Config {
	c := &river.Config{
		// -1: never delete. Dead jobs stay until an operator deletes them.
		CancelledJobRetentionPeriod: -1,
		DiscardedJobRetentionPeriod: -1,
		CompletedJobRetentionPeriod: q.cfg.CompletedRetention,
		FetchCooldown:               q.cfg.FetchCooldown,
		FetchPollInterval:           q.cfg.FetchPollInterval,
		JobTimeout:                  q.cfg.JobTimeout,
		RescueStuckJobsAfter:        q.cfg.RescueAfter,
		Logger:                      q.log.With("component", "river"),
		MaxAttempts:                 q.cfg.Policy.MaxAttempts(),
		RetryPolicy:                 retryPolicy{q.cfg.Policy},
	}
	if q.cfg.Handler != nil {
		c.Workers = river.NewWorkers()
		river.AddWorker(c.Workers, &worker{q: q})
		c.Queues = make(map[string]river.QueueConfig, len(q.cfg.Queues))
		for _, name := range q.cfg.Queues {
			c.Queues[name] = river.QueueConfig{MaxWorkers: q.cfg.Concurrency}
		}
	}
	return c
}

// Enqueue stores jobs atomically in a transaction of its own. Do not call it
// while the calling goroutine holds a transaction on db.Write: with one write
// connection it would wait for that transaction until ctx ends. Use EnqueueTx
// there.
func (q *Queue) Enqueue(ctx context.Context, jobs ...queue.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	return q.db.InTx(ctx, func(tx *sql.Tx) error { return q.EnqueueTx(ctx, tx, jobs...) })
}

// EnqueueTx stores jobs in the caller's transaction on db.Write: they become
// visible (and durable) when tx commits, and vanish if it rolls back. This is
// how an upload commits its asset rows and their jobs together.
func (q *Queue) EnqueueTx(ctx context.Context, tx *sql.Tx, jobs ...queue.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	now := time.Now().UTC()
	params := make([]river.InsertManyParams, 0, len(jobs))
	tr := tiers{}
	for i := range jobs {
		j := &jobs[i]
		if err := j.Validate(); err != nil {
			return err
		}
		at := j.EnqueuedAt
		if at.IsZero() {
			at = now
		}
		tier, err := tr.next(ctx, tx, j.Queue, j.Group)
		if err != nil {
			return err
		}
		params = append(params, river.InsertManyParams{
			Args: jobArgs{ID: j.ID, Group: j.Group, Payload: j.Payload, EnqueuedAt: at},
			InsertOpts: &river.InsertOpts{
				Queue:       j.Queue,
				MaxAttempts: q.cfg.Policy.MaxAttempts(),
				Priority:    tier,
			},
		})
	}
	// The fast insert returns no rows: nothing here needs River's ids, and
	// a duplicate job id is still refused, by idIndexName.
	if _, err := q.client.InsertManyFastTx(ctx, tx, params); err != nil {
		return enqueueError(err)
	}
	return nil
}

// enqueueError maps a violation of our job ID index to ErrDuplicate.
func enqueueError(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE && strings.Contains(se.Error(), idIndexName) {
		return fmt.Errorf("riverqueue: enqueue: %w", queue.ErrDuplicate)
	}
	return fmt.Errorf("riverqueue: enqueue: %w", err)
}

// Start works jobs until Stop, if the Queue has a Handler; otherwise it does
// nothing. With RecoverOnStart it first recovers a dead process's running
// jobs. ctx bounds start-up only.
func (q *Queue) Start(ctx context.Context) error {
	if q.cfg.Handler == nil {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started {
		return errors.New("riverqueue: already started")
	}
	if q.cfg.RecoverOnStart {
		if err := q.recover(ctx); err != nil {
			return err
		}
	}
	// River hard-stops when its Start context ends; only Stop may end ours.
	if err := q.client.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("riverqueue: start: %w", err)
	}
	q.started = true
	return nil
}

// Stop stops fetching and waits for running handlers until ctx ends, then
// cancels them and waits up to StopGrace more. River puts a job whose handler
// returned because of that cancellation back as available, without counting
// the attempt. Stop returns an error only if handlers were still running
// after the grace; their jobs stay running in the database until
// RecoverOnStart or River's rescuer frees them.
func (q *Queue) Stop(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.started || q.stopped {
		return nil
	}
	q.stopped = true
	err := q.client.Stop(ctx)
	if err == nil {
		return nil
	}
	if ctx.Err() == nil {
		return fmt.Errorf("riverqueue: stop: %w", err)
	}
	q.log.WarnContext(ctx, "queue stop deadline passed; cancelling running jobs", "grace", q.cfg.StopGrace)
	hard, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.cfg.StopGrace)
	defer cancel()
	if err := q.client.StopAndCancel(hard); err != nil {
		return fmt.Errorf("riverqueue: stop: handlers still running %s after cancellation: %w", q.cfg.StopGrace, err)
	}
	return nil
}

// recover makes jobs left running available again (or dead, after their last
// attempt), recording the lost attempt as an error, and drops the River
// leadership of the dead process. It uses River's own rescue query, as
// River's rescuer would after RescueAfter.
func (q *Queue) recover(ctx context.Context) error {
	var recovered, dead int
	err := q.db.InTx(ctx, func(tx *sql.Tx) error {
		exec := q.driver.UnwrapExecutor(tx)
		now := time.Now().UTC()
		horizon := now.Add(time.Hour) // every running job, however recent
		var after int64
		for {
			jobs, err := exec.JobGetStuck(ctx, &riverdriver.JobGetStuckParams{AfterID: after, Max: 500, StuckHorizon: horizon})
			if err != nil {
				return fmt.Errorf("riverqueue: recover: %w", err)
			}
			if len(jobs) == 0 {
				break
			}
			p := &riverdriver.JobRescueManyParams{StuckHorizon: horizon}
			for _, j := range jobs {
				after = j.ID
				msg, err := json.Marshal(rivertype.AttemptError{
					At: now, Attempt: j.Attempt,
					Error: "worker stopped during the attempt (process ended); recovered at start-up",
				})
				if err != nil {
					return fmt.Errorf("riverqueue: recover: %w", err)
				}
				state, finalized := rivertype.JobStateAvailable, (*time.Time)(nil)
				if j.Attempt >= j.MaxAttempts {
					state, finalized = rivertype.JobStateDiscarded, &now
					dead++
				} else {
					recovered++
				}
				p.ID = append(p.ID, j.ID)
				p.Error = append(p.Error, msg)
				p.FinalizedAt = append(p.FinalizedAt, finalized)
				p.ScheduledAt = append(p.ScheduledAt, j.ScheduledAt) // first in line again, not behind newer jobs
				p.State = append(p.State, string(state))
			}
			if _, err := exec.JobRescueMany(ctx, p); err != nil {
				return fmt.Errorf("riverqueue: recover: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM river_leader`); err != nil {
			return fmt.Errorf("riverqueue: recover: drop stale leader: %w", err)
		}
		return nil
	})
	if err == nil && recovered+dead > 0 {
		q.log.WarnContext(ctx, "recovered jobs interrupted by a previous process", "available", recovered, "dead", dead)
	}
	return err
}

// retryPolicy is River's view of queue.Policy. River asks it only when a
// worker has no answer of its own (see worker.NextRetry) and in its rescuer.
type retryPolicy struct{ p queue.Policy }

func (r retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	return time.Now().Add(r.p.Delay(max(job.Attempt, 1)))
}
