package queuetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// run is one handler call as the handler saw it.
type run struct {
	attempt, max int
	start, end   time.Time
	ctxErr       error
}

// scripted is a handler whose outcome per attempt comes from a script; it
// reports every run on runs.
type scripted struct {
	mu      sync.Mutex
	history []run
	runs    chan run
	outcome func(attempt int) error
}

func newScripted(outcome func(attempt int) error) *scripted {
	return &scripted{runs: make(chan run, 100), outcome: outcome}
}

func (h *scripted) ProcessJob(ctx context.Context, job *queue.Job) error {
	r := run{attempt: job.Attempt, max: job.MaxAttempts, start: time.Now()}
	err := h.outcome(job.Attempt)
	r.end = time.Now()
	h.mu.Lock()
	h.history = append(h.history, r)
	h.mu.Unlock()
	h.runs <- r
	return err
}

func (h *scripted) calls() []run {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.history)
}

// retriesWithBackoff: failures are retried after the policy's delay, with
// Attempt counting up and MaxAttempts fixed, until success.
func (s suite) retriesWithBackoff(t *testing.T) {
	policy := queue.Policy{Retries: 3, Backoff: 100 * time.Millisecond}
	h := newScripted(func(attempt int) error {
		if attempt < 3 {
			return fmt.Errorf("fail %d", attempt)
		}
		return nil
	})
	b, _ := s.started(t, Config{Handler: h, Policy: policy})
	job := newJob(t)
	enqueue(t, b, job)

	var runs []run
	for range 3 {
		runs = append(runs, recv(t, h.runs, "an attempt"))
	}
	for i, r := range runs {
		if r.attempt != i+1 || r.max != 4 {
			t.Errorf("run %d: Attempt=%d MaxAttempts=%d, want %d and 4", i, r.attempt, r.max, i+1)
		}
	}
	for i := 1; i < len(runs); i++ {
		minGap := time.Duration(float64(policy.Backoff<<(i-1))*(1-queue.Jitter)) - timePrecision
		if gap := runs[i].start.Sub(runs[i-1].end); gap < minGap {
			t.Errorf("attempt %d started %v after attempt %d failed, want at least %v", i+1, gap, i, minGap)
		}
	}
	info := waitState(t, b, job.ID, queue.Completed)
	if info.Attempt != 3 || info.MaxAttempts != 4 || !slices.Equal(info.Errors, []string{"fail 1", "fail 2"}) {
		t.Errorf("Info = attempt %d, max %d, errors %q; want 3, 4, [fail 1 fail 2]", info.Attempt, info.MaxAttempts, info.Errors)
	}
}

// panicIsRetried: a handler that panics fails that attempt like an error;
// the worker survives and the job is retried.
func (s suite) panicIsRetried(t *testing.T) {
	h := newScripted(func(attempt int) error {
		if attempt == 1 {
			panic("nil map in the analyzer")
		}
		return nil
	})
	b, _ := s.started(t, Config{Handler: h})
	job := newJob(t)
	enqueue(t, b, job)
	info := waitState(t, b, job.ID, queue.Completed)
	if info.Attempt != 2 || len(info.Errors) != 1 {
		t.Errorf("after a panic then success: attempt %d, errors %q; want 2 and one error", info.Attempt, info.Errors)
	}
}

// exhaustedRetries: the last failed attempt leaves the job dead, kept,
// listed and counted, and it is not run again.
func (s suite) exhaustedRetries(t *testing.T) {
	h := newScripted(func(attempt int) error { return fmt.Errorf("boom %d", attempt) })
	b, _ := s.started(t, Config{Handler: h, Policy: fastPolicy(2)})
	job := newJob(t)
	enqueue(t, b, job)

	info := waitState(t, b, job.ID, queue.Dead)
	if info.Attempt != 3 || info.MaxAttempts != 3 || info.FinishedAt == nil ||
		!slices.Equal(info.Errors, []string{"boom 1", "boom 2", "boom 3"}) || info.LastError() != "boom 3" {
		t.Errorf("dead Info = attempt %d, max %d, finished %v, errors %q; want 3, 3, set, [boom 1 boom 2 boom 3]",
			info.Attempt, info.MaxAttempts, info.FinishedAt, info.Errors)
	}
	dead, err := b.List(t.Context(), queue.Dead, 10)
	if err != nil || !slices.Equal(infoIDs(dead), []string{job.ID}) {
		t.Errorf("List(dead) = %v, %v; want [%s]", infoIDs(dead), err, job.ID)
	} else if !jsonEqual(dead[0].Payload, job.Payload) || dead[0].LastError() != "boom 3" {
		t.Errorf("listed dead job lost its payload or error: %+v", dead[0])
	}
	if c := counts(t, b); c[queue.Dead] != 1 || c[queue.Completed] != 0 {
		t.Errorf("Counts = %v, want one dead", c)
	}

	if err := stop(t, b, wait); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if n := len(h.calls()); n != 3 {
		t.Errorf("handler ran %d times, want 3 (1 + 2 retries)", n)
	}
	if got := get(t, b, job.ID); got.State != queue.Dead {
		t.Errorf("after Stop the dead job is %s", got.State)
	}
}

// permanent: Permanent ends the job at once, whatever retries remain.
func (s suite) permanent(t *testing.T) {
	h := newScripted(func(int) error { return fmt.Errorf("decode: %w", queue.Permanent(errors.New("bad image"))) })
	b, _ := s.started(t, Config{Handler: h, Policy: fastPolicy(3)})
	job := newJob(t)
	enqueue(t, b, job)
	info := waitState(t, b, job.ID, queue.Dead)
	if info.Attempt != 1 || info.MaxAttempts != 4 || len(info.Errors) != 1 || info.LastError() != "decode: bad image" || info.FinishedAt == nil {
		t.Errorf("Info = attempt %d, max %d, errors %q, finished %v; want 1, 4, [decode: bad image], set",
			info.Attempt, info.MaxAttempts, info.Errors, info.FinishedAt)
	}
	if err := stop(t, b, wait); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if n := len(h.calls()); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// retryAfter: RetryAfter's delay replaces the policy's, and the job waits
// as retrying meanwhile.
func (s suite) retryAfter(t *testing.T) {
	const d = 700 * time.Millisecond
	h := newScripted(func(attempt int) error {
		if attempt == 1 {
			return queue.RetryAfter(errors.New("429"), d)
		}
		return nil
	})
	b, _ := s.started(t, Config{Handler: h, Policy: fastPolicy(3)})
	job := newJob(t)
	enqueue(t, b, job)
	first := recv(t, h.runs, "attempt 1")
	if info := get(t, b, job.ID); info.State != queue.Retrying && info.State != queue.Active {
		t.Errorf("after a RetryAfter the job is %s, want retrying", info.State)
	}
	waitState(t, b, job.ID, queue.Retrying)
	second := recv(t, h.runs, "attempt 2")
	if gap := second.start.Sub(first.end); gap < d-timePrecision {
		t.Errorf("attempt 2 began %v after RetryAfter(%v)", gap, d)
	}
	if second.attempt != 2 {
		t.Errorf("attempt after RetryAfter = %d, want 2 (it counts as an attempt)", second.attempt)
	}
	waitState(t, b, job.ID, queue.Completed)
}

// retryReplays: Retry runs a dead job again with a fresh attempt budget.
func (s suite) retryReplays(t *testing.T) {
	var life atomic.Int32
	h := newScripted(func(attempt int) error {
		if life.Load() == 0 {
			return queue.Permanent(errors.New("ai down for good"))
		}
		return nil
	})
	policy := fastPolicy(2)
	b, _ := s.started(t, Config{Handler: h, Policy: policy})
	job := newJob(t)
	enqueue(t, b, job)
	recv(t, h.runs, "the first life")
	waitState(t, b, job.ID, queue.Dead)

	life.Store(1)
	if err := b.Retry(t.Context(), job.ID); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	r := recv(t, h.runs, "the replayed job")
	if r.attempt != 1 || r.max != policy.MaxAttempts() {
		t.Errorf("replayed run: Attempt=%d MaxAttempts=%d, want 1 and %d", r.attempt, r.max, policy.MaxAttempts())
	}
	info := waitState(t, b, job.ID, queue.Completed)
	if !jsonEqual(info.Payload, job.Payload) || !slices.Contains(info.Errors, "ai down for good") {
		t.Errorf("replayed job lost its payload or its history: %+v", info)
	}
}

// delete: pending and dead jobs can be deleted; active ones cannot.
func (s suite) delete(t *testing.T) {
	release := make(chan struct{})
	blocked := make(chan string, 1)
	h := queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		if string(job.Payload) == `"block"` {
			blocked <- job.ID
			<-release
			return nil
		}
		return queue.Permanent(errors.New("dies"))
	})
	storage := s.f.NewStorage(t)
	b := s.open(t, storage, Config{Handler: h})

	pending := newJob(t)
	enqueue(t, b, pending)
	if err := b.Delete(t.Context(), pending.ID); err != nil {
		t.Fatalf("Delete of a pending job: %v", err)
	}
	_, err := b.Get(t.Context(), pending.ID)
	wantErrIs(t, "Get of a deleted job", err, queue.ErrNotFound)

	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	dead := newJob(t)
	enqueue(t, b, dead)
	waitState(t, b, dead.ID, queue.Dead)
	if err := b.Delete(t.Context(), dead.ID); err != nil {
		t.Fatalf("Delete of a dead job: %v", err)
	}
	if l, err := b.List(t.Context(), queue.Dead, 10); err != nil || len(l) != 0 {
		t.Errorf("List(dead) after Delete = %v, %v", infoIDs(l), err)
	}

	active := newJob(t)
	active.Payload = []byte(`"block"`)
	enqueue(t, b, active)
	recv(t, blocked, "the blocking job")
	wantErrIs(t, "Delete of an active job", b.Delete(t.Context(), active.ID), queue.ErrActive)
	close(release)
	waitState(t, b, active.ID, queue.Completed)
	if c := counts(t, b); c[queue.Pending]+c[queue.Dead] != 0 || c[queue.Completed] != 1 {
		t.Errorf("Counts = %v, want only the completed job", c)
	}
}

// sentinels: unknown IDs and wrong states give the documented errors.
func (s suite) sentinels(t *testing.T) {
	h := newScripted(func(int) error { return nil })
	b, _ := s.started(t, Config{Handler: h})
	ctx := t.Context()
	_, err := b.Get(ctx, "01NOSUCHJOB0000000000000000")
	wantErrIs(t, "Get(unknown)", err, queue.ErrNotFound)
	wantErrIs(t, "Retry(unknown)", b.Retry(ctx, "01NOSUCHJOB0000000000000000"), queue.ErrNotFound)
	wantErrIs(t, "Delete(unknown)", b.Delete(ctx, "01NOSUCHJOB0000000000000000"), queue.ErrNotFound)

	done := newJob(t)
	enqueue(t, b, done)
	waitState(t, b, done.ID, queue.Completed)
	wantErrIs(t, "Retry(completed)", b.Retry(ctx, done.ID), queue.ErrNotDead)

	idle := s.open(t, s.f.NewStorage(t), Config{})
	pending := newJob(t)
	enqueue(t, idle, pending)
	wantErrIs(t, "Retry(pending)", idle.Retry(ctx, pending.ID), queue.ErrNotDead)
	if _, err := idle.List(ctx, queue.State("discarded"), 1); err == nil {
		t.Errorf("List of an unknown state succeeded")
	}
}
