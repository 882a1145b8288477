package redisqueue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/queue"
)

// How a job's fate is decided. asynq is given a retry limit out of reach
// and never archives: the worker decides.
//   - nil: asynq marks the task completed (kept for its retention).
//   - a retryable error before the last attempt: the error is appended to
//     the job's history and returned; asynq counts the attempt and retries
//     after RetryDelay.
//   - Permanent, or any error on the last attempt: the job is written to
//     its dead record first, then asynq is told RevokeTask, which deletes
//     its task. A worker lost between the two leaves both; the task's next
//     delivery sees the dead record and only finishes the deletion.
//   - a delivery beyond the last attempt (the worker of the last attempt
//     was lost, and asynq's recoverer retried it) makes the job dead
//     without running it, so a job that kills its worker cannot loop.
//   - context.Canceled while Stop cancels: returned as interrupted, which
//     asynq neither counts (IsFailure) nor delays: the job waits as before.
//   - Snooze: returned as snoozed, which asynq does not count (IsFailure)
//     and schedules after the snooze (RetryDelay): the job waits as before,
//     its retried count and history unchanged.

// Start works jobs until Stop, if the Queue has a Handler; otherwise it does
// nothing. With RecoverOnStart it first hands every running job to asynq's
// recoverer. ctx bounds start-up only.
func (q *Queue) Start(ctx context.Context) error {
	if q.cfg.Handler == nil {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started {
		return errors.New("redisqueue: already started")
	}
	if q.cfg.RecoverOnStart {
		if err := q.expireLeases(ctx); err != nil {
			return err
		}
	}
	q.srv = asynq.NewServerFromRedisClient(q.rdb, asynq.Config{
		Concurrency:              q.cfg.Concurrency,
		Queues:                   fairPriorities(q.cfg.Queues),
		StrictPriority:           true,
		TaskCheckInterval:        q.cfg.PollInterval,
		DelayedTaskCheckInterval: q.cfg.PollInterval,
		RetryDelayFunc:           q.retryDelay,
		IsFailure:                func(err error) bool { return !uncounted(err) },
		// Stop waits for handlers itself; asynq's own deadline only puts
		// back the jobs of handlers that ignored their cancellation.
		ShutdownTimeout: time.Second,
		Logger:          asynqLogger{q.log.With("component", "asynq")},
		LogLevel:        asynq.WarnLevel,
	})
	if err := q.srv.Start(asynq.HandlerFunc(q.process)); err != nil {
		return fmt.Errorf("redisqueue: start: %w", err)
	}
	q.started = true
	return nil
}

// Stop stops fetching and waits for running handlers until ctx ends, then
// cancels them and waits up to StopGrace more. A job whose handler returns
// context.Canceled because of that cancellation waits again as before, its
// attempt not counted. Stop returns once asynq has recorded every outcome,
// and an error only if handlers were still running after the grace: asynq
// then puts their jobs back.
func (q *Queue) Stop(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.started || q.stopped {
		return nil
	}
	q.stopped = true
	q.run.stop()
	q.srv.Stop()
	var err error
	if !q.run.wait(ctx) {
		q.log.WarnContext(ctx, "queue stop deadline passed; cancelling running jobs", "grace", q.cfg.StopGrace)
		q.run.interrupt()
		grace, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.cfg.StopGrace)
		if !q.run.wait(grace) {
			err = fmt.Errorf("redisqueue: stop: handlers still running %s after cancellation", q.cfg.StopGrace)
		}
		cancel()
	}
	q.srv.Shutdown()
	return err
}

// running tracks this process's handlers, so that Stop can wait for them
// and cancel them.
type running struct {
	mu          sync.Mutex
	n           int
	idle        chan struct{} // closed while n == 0
	cancels     map[*context.CancelFunc]struct{}
	stopping    bool
	interrupted atomic.Bool
}

// begin registers a handler about to run, or reports false once Stop began.
func (r *running) begin(cancel *context.CancelFunc) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return false
	}
	if r.n == 0 {
		r.idle = make(chan struct{})
	}
	r.n++
	if r.cancels == nil {
		r.cancels = map[*context.CancelFunc]struct{}{}
	}
	r.cancels[cancel] = struct{}{}
	return true
}

func (r *running) end(cancel *context.CancelFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cancels, cancel)
	r.n--
	if r.n == 0 {
		close(r.idle)
	}
}

func (r *running) stop() {
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
}

// wait reports whether no handler runs any more before ctx ends.
func (r *running) wait(ctx context.Context) bool {
	r.mu.Lock()
	idle := r.idle
	r.mu.Unlock()
	select {
	case <-idle:
		return true
	default:
	}
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *running) interrupt() {
	r.interrupted.Store(true)
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.cancels {
		(*c)()
	}
}

// interrupted marks a run that Stop cancelled: asynq puts the job back
// without counting the attempt.
type interrupted struct{ err error }

func (e *interrupted) Error() string { return e.err.Error() }
func (e *interrupted) Unwrap() error { return e.err }

// snoozed marks a run the handler snoozed: asynq puts the job back for d
// without counting the attempt.
type snoozed struct {
	err error
	d   time.Duration
}

func (e *snoozed) Error() string { return e.err.Error() }
func (e *snoozed) Unwrap() error { return e.err }

// uncounted reports a run that asynq must not count as an attempt.
func uncounted(err error) bool {
	return errors.As(err, new(*interrupted)) || errors.As(err, new(*snoozed))
}

// retryDelay is asynq's RetryDelayFunc: n is the number of attempts that
// failed before the one that just failed. The delay is rounded up to the
// next whole second, as asynq schedules retries in seconds.
func (q *Queue) retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if errors.As(err, new(*interrupted)) {
		return 0
	}
	var s *snoozed
	d, ok := queue.RetryDelay(err)
	switch {
	case errors.As(err, &s):
		d = s.d
	case !ok:
		d = q.cfg.Policy.Delay(n + 1)
	}
	now := time.Now()
	at := now.Add(d)
	if t := at.Truncate(time.Second); t.Before(at) {
		at = t.Add(time.Second)
	}
	return at.Sub(now)
}

// beginScript runs before each delivery but a first attempt's. It takes
// the job off its group's backlog (fair.go) in case the worker of its first
// attempt was lost before that, reports whether the job is already dead (a
// worker lost between writing the dead record and asynq's deletion), and
// records an error for every earlier attempt of this life that ended
// without one (its worker was lost).
// KEYS: task, dead record, group set. ARGV: attempts before this one,
// message, id.
var beginScript = redis.NewScript(`
redis.call("ZREM", KEYS[3], ARGV[3])
if redis.call("EXISTS", KEYS[2]) == 1 then
	return 1
end
local base = tonumber(redis.call("HGET", KEYS[1], "klectr:base") or "0")
local raw = redis.call("HGET", KEYS[1], "klectr:errors")
local errs = {}
if raw then errs = cjson.decode(raw) end
local before = tonumber(ARGV[1])
if #errs < base + before then
	for k = #errs - base + 1, before do
		table.insert(errs, "attempt " .. k .. ": " .. ARGV[2])
	end
	redis.call("HSET", KEYS[1], "klectr:errors", cjson.encode(errs))
end
return 0`)

// appendErrorScript appends ARGV[1] to the history of task KEYS[1], if the
// task still exists.
var appendErrorScript = redis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 0 then
	return 0
end
local raw = redis.call("HGET", KEYS[1], "klectr:errors")
local errs = {}
if raw then errs = cjson.decode(raw) end
table.insert(errs, ARGV[1])
redis.call("HSET", KEYS[1], "klectr:errors", cjson.encode(errs))
return 1`)

// markDeadScript writes the dead record of a job from its task.
// KEYS: task, dead record, dead set. ARGV: last error ("" if recorded
// already), id, enqueue score, queue, envelope, attempt, finished (ns).
var markDeadScript = redis.NewScript(`
local raw = redis.call("HGET", KEYS[1], "klectr:errors")
local errs = {}
if raw then errs = cjson.decode(raw) end
if ARGV[1] ~= "" then table.insert(errs, ARGV[1]) end
local enc = "[]"
if #errs > 0 then enc = cjson.encode(errs) end
redis.call("HSET", KEYS[2], "queue", ARGV[4], "job", ARGV[5], "attempt", ARGV[6], "finished", ARGV[7], "errors", enc)
redis.call("ZADD", KEYS[3], ARGV[3], ARGV[2])
return 1`)

// lostAttempt is the error recorded for an attempt whose worker was lost.
const lostAttempt = "the worker was lost during the attempt (process killed, or its Redis lease expired)"

// maxErrorLen bounds each recorded error message.
const maxErrorLen = 2048

func errorText(err error) string {
	s := strings.ToValidUTF8(err.Error(), "\uFFFD")
	if len(s) > maxErrorLen {
		s = s[:maxErrorLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return s
}

// process is the asynq handler around queue.Handler.
func (q *Queue) process(ctx context.Context, t *asynq.Task) error {
	id, _ := asynq.GetTaskID(ctx)
	qname, _ := asynq.GetQueueName(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	attempt := retried + 1
	log := q.log.With("jobId", id, "queue", qname, "attempt", attempt)

	hctx, cancel := context.WithTimeout(ctx, q.cfg.JobTimeout)
	defer cancel()
	if !q.run.begin(&cancel) {
		// Dequeued while Stop began: put back, unattempted.
		return &interrupted{err: errors.New("redisqueue: stopping")}
	}
	defer q.run.end(&cancel)

	tk := taskKey(qname, id)
	base := baseQueue(qname)
	env, envErr := decodeEnvelope(id, t.Payload())
	gk := groupKey(base, env.Group)
	if retried == 0 {
		// A first attempt cannot have a dead record nor an earlier attempt
		// to record: the lost worker's run would have counted.
		if err := q.rdb.ZRem(ctx, gk, id).Err(); err != nil {
			log.WarnContext(ctx, "could not take the job off its group's backlog; the next enqueue of the group will", "error", err.Error())
		}
	} else {
		dead, err := beginScript.Run(ctx, q.rdb, []string{tk, deadKey(id), gk}, retried, lostAttempt, id).Int()
		if err != nil {
			log.WarnContext(ctx, "could not read the job's history; running it anyway", "error", err.Error())
		}
		if dead == 1 {
			log.WarnContext(ctx, "job already dead; removing its task")
			return asynq.RevokeTask
		}
	}
	if envErr != nil {
		log.ErrorContext(ctx, "undecodable job; dead", "error", envErr.Error())
		return q.markDead(ctx, log, qname, id, t.Payload(), envelope{MaxAttempts: attempt}, attempt, envErr)
	}
	log = log.With("maxAttempts", env.MaxAttempts)
	if attempt > env.MaxAttempts {
		// The lost attempt was recorded by beginScript.
		log.WarnContext(ctx, "the worker of the job's last attempt was lost; dead")
		return q.markDead(ctx, log, qname, id, t.Payload(), env, env.MaxAttempts, nil)
	}

	job := &queue.Job{ID: id, Queue: base, Group: env.Group, Payload: env.Payload, Attempt: attempt, MaxAttempts: env.MaxAttempts, EnqueuedAt: env.EnqueuedAt}
	err := q.call(hctx, job)
	if err == nil {
		return nil
	}
	log = log.With("error", err.Error())
	switch {
	case ctx.Err() != nil:
		// asynq's own context ended (it put the job back at Stop, or the
		// lease expired): asynq decides, whatever we return.
		return err
	case q.run.interrupted.Load() && errors.Is(err, context.Canceled):
		log.InfoContext(ctx, "job interrupted by stop; put back")
		return &interrupted{err: err}
	case queue.IsPermanent(err):
		log.WarnContext(ctx, "job failed permanently; dead")
		return q.markDead(ctx, log, qname, id, t.Payload(), env, attempt, err)
	case isSnooze(err):
		d, _ := queue.SnoozeDelay(err)
		log.DebugContext(ctx, "job snoozed; attempt not counted", "for", d)
		return &snoozed{err: err, d: d}
	case attempt >= env.MaxAttempts:
		log.WarnContext(ctx, "job failed on its last attempt; dead")
		return q.markDead(ctx, log, qname, id, t.Payload(), env, attempt, err)
	}
	if err := appendErrorScript.Run(ctx, q.rdb, []string{tk}, errorText(err)).Err(); err != nil {
		log.WarnContext(ctx, "could not record the job's error", "recordError", err.Error())
	}
	log.InfoContext(ctx, "job failed; will retry")
	return err
}

func isSnooze(err error) bool {
	_, ok := queue.SnoozeDelay(err)
	return ok
}

// call runs the handler, turning a panic into an error.
func (q *Queue) call(ctx context.Context, job *queue.Job) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return q.cfg.Handler.ProcessJob(ctx, job)
}

// markDead writes the dead record (of queue baseQueue(qname)) and tells
// asynq to delete the task of sub-queue qname. If
// the record cannot be written, the error goes back to asynq, which retries
// the job: its next delivery, beyond the last attempt, makes it dead.
func (q *Queue) markDead(ctx context.Context, log *slog.Logger, qname, id string, rawEnv []byte, env envelope, attempt int, cause error) error {
	last := ""
	if cause != nil {
		last = errorText(cause)
	}
	err := markDeadScript.Run(ctx, q.rdb, []string{taskKey(qname, id), deadKey(id), deadSetKey},
		last, id, enqueueScore(env.EnqueuedAt), baseQueue(qname), string(rawEnv), attempt, time.Now().UnixNano()).Err()
	if err != nil {
		log.ErrorContext(ctx, "could not record the dead job; asynq will deliver it again", "recordError", err.Error())
		if cause == nil {
			cause = errors.New("redisqueue: dead job not recorded")
		}
		return fmt.Errorf("%w (dead record not written: %v)", cause, err)
	}
	return asynq.RevokeTask
}

// expireLeasesScript makes every lease of queue KEYS[1] expired long ago,
// so that asynq's recoverer, which runs when the server starts, retries
// their jobs at once.
var expireLeasesScript = redis.NewScript(`
local ids = redis.call("ZRANGE", KEYS[1], 0, -1)
for _, id in ipairs(ids) do
	redis.call("ZADD", KEYS[1], "XX", 0, id)
end
return #ids`)

func (q *Queue) expireLeases(ctx context.Context) error {
	for _, name := range q.cfg.Queues {
		for _, sq := range subQueues(name) {
			n, err := expireLeasesScript.Run(ctx, q.rdb, []string{leaseKey(sq)}).Int()
			if err != nil {
				return fmt.Errorf("redisqueue: recover on start: %w", err)
			}
			if n > 0 {
				q.log.WarnContext(ctx, "recovering jobs interrupted by a previous process", "queue", sq, "jobs", n)
			}
		}
	}
	return nil
}

// asynqLogger sends asynq's logs to slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }

// Warn: asynq warns "revoke task id=…" for every job this package makes
// dead, which is logged already.
func (a asynqLogger) Warn(args ...any) {
	msg := fmt.Sprint(args...)
	if strings.HasPrefix(msg, "revoke task id=") {
		a.l.Debug(msg)
		return
	}
	a.l.Warn(msg)
}
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }

// Fatal is logged as an error: a library must not end the process.
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)) }
