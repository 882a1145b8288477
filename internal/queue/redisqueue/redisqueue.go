// Package redisqueue is the scale-out queue backend: asynq
// (github.com/hibiken/asynq v0.26.0) on Redis. Any number of processes may
// enqueue and work the same Redis.
//
// What to know when running it:
//   - Crash recovery is asynq's lease (constants inside asynq): a worker
//     renews the lease of its running jobs every 5 s for 30 s, and every
//     worker's recoverer, at its start and then once a minute, retries the
//     jobs whose lease expired more than 30 s ago. A job whose worker was
//     killed mid-run therefore runs again 55 to 120 s after the kill (62 s
//     measured, TestMeasureCrashRedelivery, with a surviving worker whose
//     recoverer came round just after the lease ran out; several workers'
//     recoverers, out of phase, bring it nearer the minimum), plus the
//     retry delay, and that run counts as an attempt. RecoverOnStart
//     makes it immediate for a process that is the only worker.
//   - Redis must keep its data: with appendonly off, a restart loses the
//     jobs written since the last snapshot, and a maxmemory-policy other
//     than noeviction lets Redis evict jobs. CheckPersistence names what is
//     wrong. Whatever Redis loses, the asset store still knows: Known tells
//     a reconciler which jobs to enqueue again, and Enqueue refuses an ID
//     Redis still holds (queue.ErrDuplicate), in any state and any queue.
//   - Dead jobs do not use asynq's archive, which keeps at most 10,000 tasks
//     per queue for at most 90 days and deletes older ones silently: they
//     are moved to keys of this package (klectr:dead…) and kept until
//     Delete.
//   - asynq keeps only a task's last error; this package keeps every
//     attempt's error in a field of its own in asynq's task hash (and in
//     the dead record), so Info.Errors is complete (each message cut at
//     2 KiB). An attempt lost with its worker is recorded, at the next
//     attempt, as such.
//   - Retry delays are rounded up to the next whole second: asynq stores
//     retry times in seconds. RetryAfter's delay is kept as a minimum.
//   - Completed jobs are kept for CompletedRetention, then asynq deletes
//     them; until then their ID is taken (Enqueue gives ErrDuplicate).
//   - Jobs are written by this package's scripts, in asynq's encoding and
//     key layout (asynq has no atomic batch enqueue, and its replay of a
//     dead task keeps the spent retry count); message_test.go checks them
//     against asynq's Inspector and must pass before asynq is upgraded.
//     Keys are built inside the scripts, so Redis must be a single node (or
//     Sentinel), not Cluster.
//   - Fairness between groups (queue.Backend): each queue q is served as
//     four asynq queues, q itself (tier 1) and q:2 to q:4, in strict
//     priority; the enqueue script chooses a job's tier from its group's
//     backlog, a sorted set klectr:fair:<queue>:<group> that the worker
//     empties as jobs start (fair.go). asynq's own tools show the tiers as
//     queues; this package's admin calls show the queue.
//   - Counts and List read every job of the states they report except the
//     dead ones (an admin's call, not a probe's: use Ping for readiness).
package redisqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/queue"
)

var _ queue.Backend = (*Queue)(nil)

// Defaults of Config.
const (
	DefaultConcurrency        = 16
	DefaultJobTimeout         = time.Minute
	DefaultPollInterval       = 100 * time.Millisecond
	DefaultStopGrace          = 5 * time.Second
	DefaultCompletedRetention = 24 * time.Hour
)

// Config configures a Queue. The zero value of each field means its default.
type Config struct {
	// URL is the Redis server, redis://[:password@]host:port/db or
	// rediss://… (REDIS_URL).
	URL string
	// Handler works the jobs. Nil makes an enqueue-only Queue (klectr api):
	// Start does nothing and all the other methods work.
	Handler queue.Handler
	// Queues are the queue names this process works. Defaults to
	// [queue.AIProcessing]. Jobs of any valid queue name can be enqueued.
	Queues []string
	// Policy decides retries and backoff. Defaults to queue.DefaultPolicy().
	// It fixes MaxAttempts of the jobs this Queue enqueues or replays, so
	// enqueue-only processes must be given the same Policy as workers.
	Policy queue.Policy
	// Concurrency is the most jobs this process runs at once, all its queues
	// together (asynq has one pool). Defaults to 16.
	Concurrency int
	// JobTimeout bounds one attempt: its ctx is cancelled after it, and the
	// attempt fails (and is retried). Defaults to 1 minute.
	JobTimeout time.Duration
	// PollInterval is how often an idle worker looks for new jobs and for
	// retries that are due. Defaults to 100 ms.
	PollInterval time.Duration
	// StopGrace is how long Stop waits for handlers to return after it
	// cancels them. Defaults to 5 s.
	StopGrace time.Duration
	// CompletedRetention is how long completed jobs are kept, in whole
	// seconds. Defaults to 24 h. Set by the enqueuer.
	CompletedRetention time.Duration
	// RecoverOnStart, for a process that is the only worker on this Redis:
	// at Start, every job left running is taken to be a dead process's and
	// is retried at once (its lost run counts as an attempt), instead of
	// after asynq's lease recovery (60 to 120 s). Never set it when two
	// worker processes share the Redis: it would rerun the other's running
	// jobs.
	RecoverOnStart bool
	// Logger receives this package's and asynq's logs. Default: discarded.
	Logger *slog.Logger
}

var queueName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,100}$`)

func (c Config) withDefaults() (Config, error) {
	if c.Policy == (queue.Policy{}) {
		c.Policy = queue.DefaultPolicy()
	}
	if err := c.Policy.Validate(); err != nil {
		return c, fmt.Errorf("redisqueue: %w", err)
	}
	if len(c.Queues) == 0 {
		c.Queues = []string{queue.AIProcessing}
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.JobTimeout == 0 {
		c.JobTimeout = DefaultJobTimeout
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.StopGrace == 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.CompletedRetention == 0 {
		c.CompletedRetention = DefaultCompletedRetention
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	for _, q := range c.Queues {
		if !queueName.MatchString(q) {
			return c, fmt.Errorf("redisqueue: queue name %q: want 1 to 100 of A-Z a-z 0-9 . _ -", q)
		}
	}
	switch {
	case c.URL == "":
		return c, errors.New("redisqueue: URL is empty")
	case c.Concurrency < 1:
		return c, errors.New("redisqueue: concurrency must be at least 1")
	case c.JobTimeout < 0:
		return c, errors.New("redisqueue: job timeout must be positive")
	case c.PollInterval < 0 || c.PollInterval > time.Second:
		return c, errors.New("redisqueue: poll interval must be between 0 and 1 s")
	case c.StopGrace < 0:
		return c, errors.New("redisqueue: stop grace must not be negative")
	case c.CompletedRetention < time.Second:
		return c, errors.New("redisqueue: completed retention must be at least 1 s")
	}
	return c, nil
}

// Queue is the asynq backend. Build it with New, Start it to work jobs,
// Stop it, then Close it.
type Queue struct {
	cfg Config
	rdb *redis.Client
	log *slog.Logger

	mu      sync.Mutex
	srv     *asynq.Server
	started bool
	stopped bool

	run running
}

// New connects to Redis and checks that it answers within ctx; it starts
// nothing.
func New(ctx context.Context, cfg Config) (*Queue, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		// The URL may hold a password: do not repeat it.
		return nil, errors.New("redisqueue: URL is not a valid redis:// or rediss:// URL")
	}
	rdb := redis.NewClient(opt)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redisqueue: Redis at %s (database %d) does not answer: %w", opt.Addr, opt.DB, err)
	}
	q := &Queue{cfg: cfg, rdb: rdb, log: cfg.Logger}
	q.run.idle = make(chan struct{})
	close(q.run.idle)
	return q, nil
}

// Close stops the Queue if Stop was not called, then closes its Redis
// connections.
func (q *Queue) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.StopGrace)
	defer cancel()
	stopErr := q.Stop(ctx)
	return errors.Join(stopErr, q.rdb.Close())
}

// Ping reports whether Redis answers, for readiness probes.
func (q *Queue) Ping(ctx context.Context) error {
	if err := q.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisqueue: ping: %w", err)
	}
	return nil
}

// CheckPersistence reads the Redis settings that decide whether jobs
// survive a restart or memory pressure, and returns one warning per setting
// that can lose jobs, naming it. A server that refuses CONFIG GET (some
// managed services) gives a warning saying so. err is for a Redis that does
// not answer.
func (q *Queue) CheckPersistence(ctx context.Context) (warnings []string, err error) {
	for _, c := range []struct{ name, want, why string }{
		{"appendonly", "yes", "Redis keeps jobs only in its periodic snapshots (if any): a restart or crash loses the jobs enqueued since the last one"},
		{"maxmemory-policy", "noeviction", "Redis may evict jobs when it reaches maxmemory"},
	} {
		v, err := q.rdb.ConfigGet(ctx, c.name).Result()
		var refused redis.Error
		switch {
		case errors.As(err, &refused):
			warnings = append(warnings, fmt.Sprintf("redis %s cannot be checked (CONFIG GET refused: %v); it must be %s", c.name, err, c.want))
			continue
		case err != nil:
			return warnings, fmt.Errorf("redisqueue: check persistence: %w", err)
		}
		if val, found := v[c.name]; !found || val != c.want {
			warnings = append(warnings, fmt.Sprintf("redis %s is %q: %s; set %s %s", c.name, val, c.why, c.name, c.want))
		}
	}
	return warnings, nil
}

// enqueueScript stores jobs all or none. ARGV holds, per job, its id, its
// queue, its group and its encoded asynq message in two parts (around the
// queue name, which the script chooses), then the time in ns. It returns 0,
// or the 1-based index of the first job whose ID is taken: by an asynq task
// of any queue or by a dead job.
var enqueueScript = redis.NewScript(placeLua + `
local n = (#ARGV - 1) / 5
local now = ARGV[#ARGV]
local queues = redis.call("SMEMBERS", "asynq:queues")
for i = 1, n do
	local id, q = ARGV[5*i-4], ARGV[5*i-3]
	if redis.call("EXISTS", "klectr:dead:" .. id, "asynq:{" .. q .. "}:t:" .. id) > 0 then
		return i
	end
	for _, other in ipairs(queues) do
		if redis.call("EXISTS", "asynq:{" .. other .. "}:t:" .. id) == 1 then
			return i
		end
	end
end
for i = 1, n do
	local id, q, g = ARGV[5*i-4], ARGV[5*i-3], ARGV[5*i-2]
	local sq = place(q, g, id)
	redis.call("HSET", "asynq:{" .. sq .. "}:t:" .. id, "msg", ARGV[5*i-1] .. string.char(34, #sq) .. sq .. ARGV[5*i],
		"state", "pending", "pending_since", now)
	redis.call("LPUSH", "asynq:{" .. sq .. "}:pending", id)
	redis.call("SADD", "asynq:queues", sq)
end
return 0`)

// Enqueue stores jobs atomically, in one script. An ID held by any job of
// this Redis, in any state (completed ones until their retention ends),
// gives queue.ErrDuplicate, so enqueueing a job again is always safe.
func (q *Queue) Enqueue(ctx context.Context, jobs ...queue.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	now := time.Now()
	seen := make(map[string]bool, len(jobs))
	args := make([]any, 0, 5*len(jobs)+1)
	for i := range jobs {
		j := &jobs[i]
		if err := j.Validate(); err != nil {
			return err
		}
		if !queueName.MatchString(j.Queue) {
			return fmt.Errorf("redisqueue: job %s: queue name %q: want 1 to 100 of A-Z a-z 0-9 . _ -", j.ID, j.Queue)
		}
		if seen[j.ID] {
			return fmt.Errorf("redisqueue: enqueue: job %s twice in one batch: %w", j.ID, queue.ErrDuplicate)
		}
		seen[j.ID] = true
		at := j.EnqueuedAt
		if at.IsZero() {
			at = now
		}
		m, err := q.newMessage(j.ID, j.Group, j.Payload, at.UTC())
		if err != nil {
			return err
		}
		head, tail := m.encodeAround()
		args = append(args, j.ID, j.Queue, j.Group, head, tail)
	}
	args = append(args, now.UnixNano())
	n, err := enqueueScript.Run(ctx, q.rdb, nil, args...).Int()
	if err != nil {
		return fmt.Errorf("redisqueue: enqueue: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("redisqueue: enqueue job %s: %w", jobs[n-1].ID, queue.ErrDuplicate)
	}
	return nil
}

// newMessage is the asynq message of a job's new life: no attempt yet, this
// Queue's Policy. asynq's own retry limit is set out of reach: this package
// decides when a job is dead (see worker.go). Its queue is left for the
// script that stores it to choose (encodeAround).
func (q *Queue) newMessage(id, group string, payload json.RawMessage, at time.Time) (taskMessage, error) {
	env, err := json.Marshal(envelope{Payload: payload, Group: group, EnqueuedAt: at, MaxAttempts: q.cfg.Policy.MaxAttempts()})
	if err != nil {
		return taskMessage{}, fmt.Errorf("redisqueue: job %s: %w", id, err)
	}
	return taskMessage{
		Type:    taskType,
		Payload: env,
		ID:      id,
		Retry:   asynqRetryLimit,
		// asynq's own deadline is only a backstop: the worker applies its
		// JobTimeout.
		Timeout:   int64(asynqTimeout / time.Second),
		Retention: int64(q.cfg.CompletedRetention / time.Second),
	}, nil
}

const (
	asynqRetryLimit = 1<<31 - 1
	asynqTimeout    = 24 * time.Hour
)

// Known reports whether Redis holds job id in any state: a reconciler
// re-enqueues the job of an asset that Redis lost (Enqueue of a known ID
// is refused anyway, so the check only saves work).
func (q *Queue) Known(ctx context.Context, id string) (bool, error) {
	queues, err := q.queues(ctx)
	if err != nil {
		return false, err
	}
	keys := []string{deadKey(id)}
	for _, qn := range queues {
		keys = append(keys, taskKey(qn, id))
	}
	n, err := q.rdb.Exists(ctx, keys...).Result()
	if err != nil {
		return false, fmt.Errorf("redisqueue: known %s: %w", id, err)
	}
	return n > 0, nil
}

// queues lists every asynq queue that has had a job, and this Queue's own
// with their tiers' sub-queues.
func (q *Queue) queues(ctx context.Context) ([]string, error) {
	names, err := q.rdb.SMembers(ctx, allQueuesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("redisqueue: list queues: %w", err)
	}
	for _, own := range q.cfg.Queues {
		for _, sq := range subQueues(own) {
			if !slices.Contains(names, sq) {
				names = append(names, sq)
			}
		}
	}
	return names, nil
}
