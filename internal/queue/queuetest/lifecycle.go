package queuetest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// stopWaits: Stop lets a running handler finish before it returns, and the
// outcome is recorded by then.
func (s suite) stopWaits(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	finished := make(chan struct{})
	var cancelled atomic.Bool
	b, _ := s.started(t, Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			cancelled.Store(true)
		}
		close(finished)
		return ctx.Err()
	})})
	job := newJob(t)
	enqueue(t, b, job)
	recv(t, started, "the handler")

	stopped := make(chan error, 1)
	go func() { stopped <- stop(t, b, wait) }()
	// Stop must still be waiting when the handler is released, however
	// late that is; the delay only gives a wrong Stop time to return early.
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	if err := recv(t, stopped, "Stop"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-finished:
	default:
		t.Fatalf("Stop returned while the handler was still running")
	}
	if cancelled.Load() {
		t.Errorf("Stop cancelled a handler that finished within its deadline")
	}
	if info := get(t, b, job.ID); info.State != queue.Completed {
		t.Errorf("after Stop the finished job is %s, want completed (recorded before Stop returns)", info.State)
	}

	// Stopped means no more work: a new job stays pending.
	later := newJob(t)
	enqueue(t, b, later)
	if info := get(t, b, later.ID); info.State != queue.Pending {
		t.Errorf("job enqueued after Stop is %s, want pending", info.State)
	}
	if err := stop(t, b, wait); err != nil {
		t.Errorf("second Stop: %v (must be idempotent)", err)
	}
}

// stopCancels: after Stop's deadline the handler's ctx is cancelled; the
// interrupted job is neither completed nor dead, and runs after a restart.
func (s suite) stopCancels(t *testing.T) {
	started := make(chan struct{}, 1)
	storage := s.f.NewStorage(t)
	b := s.open(t, storage, Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		started <- struct{}{}
		<-ctx.Done()
		return fmt.Errorf("analysis interrupted: %w", ctx.Err())
	})})
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	job := newJob(t)
	enqueue(t, b, job)
	recv(t, started, "the handler")

	begin := time.Now()
	if err := stop(t, b, 200*time.Millisecond); err != nil {
		t.Fatalf("Stop: %v (the handler returned once cancelled)", err)
	}
	if took := time.Since(begin); took < 200*time.Millisecond {
		t.Errorf("Stop returned after %v, before its deadline", took)
	}
	info := get(t, b, job.ID)
	if info.State != queue.Pending && info.State != queue.Retrying {
		t.Fatalf("interrupted job is %s, want pending or retrying", info.State)
	}

	ran := make(chan int, 1)
	again := s.open(t, storage, Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- job.Attempt
		return nil
	})})
	if err := again.Start(t.Context()); err != nil {
		t.Fatalf("Start after restart: %v", err)
	}
	recv(t, ran, "the interrupted job after a restart")
	waitState(t, again, job.ID, queue.Completed)
}

// concurrencyLimit: never more handlers at once than Concurrency, and the
// limit is reached.
func (s suite) concurrencyLimit(t *testing.T) {
	const limit, jobs = 3, 12
	var (
		mu                sync.Mutex
		inFlight, maxSeen int
		finished          int
		release           = make(chan struct{})
		quit              = make(chan struct{})
	)
	b, _ := s.started(t, Config{Concurrency: limit, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		mu.Lock()
		inFlight++
		maxSeen = max(maxSeen, inFlight)
		mu.Unlock()
		select {
		case <-release:
		case <-quit:
		case <-ctx.Done():
		}
		mu.Lock()
		inFlight--
		finished++
		mu.Unlock()
		return ctx.Err()
	})})
	t.Cleanup(func() { close(quit) }) // runs before the suite's Stop
	batch := make([]queue.Job, jobs)
	for i := range batch {
		batch[i] = newJob(t)
	}
	enqueue(t, b, batch...)
	// Release one handler at a time, each time only once the backend has
	// refilled every free slot, so it has every chance to overfill them.
	for done := 0; done < jobs; done++ {
		want := min(limit, jobs-done)
		eventually(t, fmt.Sprintf("%d handlers in flight after %d finished", want, done), func() bool {
			mu.Lock()
			defer mu.Unlock()
			if maxSeen > limit {
				t.Fatalf("%d handlers ran at once; the limit is %d", maxSeen, limit)
			}
			return finished == done && inFlight == want
		})
		release <- struct{}{}
	}
	mu.Lock()
	defer mu.Unlock()
	if maxSeen != limit {
		t.Errorf("at most %d handlers ran at once, want exactly the limit %d", maxSeen, limit)
	}
}

// manyJobs: 100 jobs enqueued concurrently, 40% of attempts failing: each job
// ends completed or dead exactly as its attempts say, no success repeats,
// and no job is lost.
func (s suite) manyJobs(t *testing.T) {
	const n, failRate = 100, 0.4
	type tally struct {
		calls, successes int
		final            string // "completed" or "dead", as the handler decided
		after            int    // calls after the final one
	}
	var (
		mu     sync.Mutex
		byID   = map[string]*tally{}
		finals = make(chan string, 2*n)
	)
	fails := func(id string, attempt int) bool {
		h := fnv.New64a()
		h.Write([]byte(id))
		return rand.New(rand.NewPCG(h.Sum64(), uint64(attempt))).Float64() < failRate
	}
	policy := fastPolicy(3)
	b, _ := s.started(t, Config{Concurrency: 8, Policy: policy, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		mu.Lock()
		defer mu.Unlock()
		tl := byID[job.ID]
		if tl == nil {
			tl = &tally{}
			byID[job.ID] = tl
		}
		tl.calls++
		if tl.final != "" {
			tl.after++
		}
		if fails(job.ID, job.Attempt) {
			if job.Attempt >= job.MaxAttempts && tl.final == "" {
				tl.final = string(queue.Dead)
				finals <- job.ID
			}
			return errors.New("ai: 503")
		}
		tl.successes++
		if tl.final == "" {
			tl.final = string(queue.Completed)
			finals <- job.ID
		}
		return nil
	})})

	ids := make([]string, n)
	var wg sync.WaitGroup
	for g := range 10 {
		batch := make([]queue.Job, n/10)
		for i := range batch {
			batch[i] = newJob(t)
			ids[g*len(batch)+i] = batch[i].ID
		}
		wg.Go(func() {
			for _, j := range batch {
				if err := b.Enqueue(t.Context(), j); err != nil {
					t.Errorf("Enqueue: %v", err)
				}
			}
		})
	}
	wg.Wait()
	for range n {
		recv(t, finals, "every job to reach its final attempt")
	}

	var wantCompleted, wantDead int
	mu.Lock()
	for _, id := range ids {
		switch byID[id].final {
		case string(queue.Completed):
			wantCompleted++
		case string(queue.Dead):
			wantDead++
		}
	}
	mu.Unlock()
	eventually(t, fmt.Sprintf("%d completed and %d dead", wantCompleted, wantDead), func() bool {
		c := counts(t, b)
		return c[queue.Completed] == wantCompleted && c[queue.Dead] == wantDead
	})
	if err := stop(t, b, wait); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	if c := counts(t, b); c[queue.Pending]+c[queue.Active]+c[queue.Retrying] != 0 {
		t.Errorf("Counts = %v after every job finished", c)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		tl := byID[id]
		info := get(t, b, id)
		switch {
		case tl == nil:
			t.Errorf("job %s was never run", id)
		case tl.successes > 1 || tl.after > 0:
			t.Errorf("job %s ran again after its final attempt: %d successes, %d later calls", id, tl.successes, tl.after)
		case string(info.State) != tl.final:
			t.Errorf("job %s is %s, but its handler made it %s", id, info.State, tl.final)
		case info.Attempt != tl.calls || tl.calls > policy.MaxAttempts():
			t.Errorf("job %s: Attempt %d after %d handler calls (max %d)", id, info.Attempt, tl.calls, policy.MaxAttempts())
		}
	}
	t.Logf("%d jobs: %d completed, %d dead", n, wantCompleted, wantDead)
}
