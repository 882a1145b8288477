package queuetest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// snoozes are the delays a job asks for on its first runs; the longest is
// long enough to see the job waiting between two runs.
var snoozes = []time.Duration{0, 700 * time.Millisecond, 0, 10 * time.Millisecond, 0}

// snoozeCountsNoAttempt: Snooze puts the job back without counting the run.
// A job of a policy without retries (MaxAttempts 1) that snoozes five times
// then succeeds sees Attempt 1 on all six runs and ends completed with
// Attempt 1 and no error; meanwhile it waits as pending, attempt 0. A job
// that failed its first attempt and snoozes on its second, last, one keeps
// Attempt 2, waits as retrying with Attempt 1, and completes instead of
// going dead. Each snooze's delay is honoured.
func (s suite) snoozeCountsNoAttempt(t *testing.T) {
	type call struct {
		attempt    int
		start, end time.Time
	}
	var mu sync.Mutex
	calls := map[string][]call{}
	runs := make(chan string, 100)
	var fresh, failed queue.Job
	h := queue.HandlerFunc(func(_ context.Context, job *queue.Job) error {
		c := call{attempt: job.Attempt, start: time.Now()}
		mu.Lock()
		n := len(calls[job.ID])
		mu.Unlock()
		var err error
		switch {
		case job.ID == failed.ID && n == 0:
			err = errors.New("fail 1")
		case job.ID == failed.ID && n <= 2:
			err = queue.Snooze(errors.New("dependency down"), time.Duration(2-n)*700*time.Millisecond)
		case job.ID == fresh.ID && n < len(snoozes):
			err = queue.Snooze(errors.New("dependency down"), snoozes[n])
		}
		c.end = time.Now()
		mu.Lock()
		calls[job.ID] = append(calls[job.ID], c)
		mu.Unlock()
		runs <- job.ID
		return err
	})
	fresh, failed = newJob(t), newJob(t)

	// No retries: a snooze that counted would leave the job dead.
	b, _ := s.started(t, Config{Handler: h, Policy: fastPolicy(0)})
	enqueue(t, b, fresh)
	recv(t, runs, "run 1")
	recv(t, runs, "run 2")
	// The second run snoozed for 700 ms: the job waits, unattempted.
	eventually(t, "the snoozed job to wait", func() bool { return get(t, b, fresh.ID).State != queue.Active })
	if info := get(t, b, fresh.ID); info.State != queue.Pending || info.Attempt != 0 || len(info.Errors) != 0 {
		t.Errorf("snoozed before any failure: %s, attempt %d, errors %q; want pending, 0, none", info.State, info.Attempt, info.Errors)
	}
	info := waitState(t, b, fresh.ID, queue.Completed)
	if info.Attempt != 1 || info.MaxAttempts != 1 || len(info.Errors) != 0 {
		t.Errorf("after 5 snoozes and a success: attempt %d of %d, errors %q; want 1 of 1, none", info.Attempt, info.MaxAttempts, info.Errors)
	}
	mu.Lock()
	got := slices.Clone(calls[fresh.ID])
	mu.Unlock()
	if len(got) != len(snoozes)+1 {
		t.Fatalf("handler ran %d times, want %d", len(got), len(snoozes)+1)
	}
	for i, c := range got {
		if c.attempt != 1 {
			t.Errorf("run %d saw Attempt %d, want 1: a snooze counted", i+1, c.attempt)
		}
		if i > 0 {
			if gap, d := c.start.Sub(got[i-1].end), snoozes[i-1]; gap < d-timePrecision {
				t.Errorf("run %d began %v after Snooze(%v)", i+1, gap, d)
			}
		}
	}

	for range len(got) - 2 {
		recv(t, runs, "the later runs")
	}

	// The last attempt may snooze; it stays the last attempt.
	b2, _ := s.started(t, Config{Handler: h, Policy: fastPolicy(1)})
	enqueue(t, b2, failed)
	recv(t, runs, "the failed attempt")
	recv(t, runs, "the first snooze of the last attempt")
	eventually(t, "the snoozed job to wait", func() bool { return get(t, b2, failed.ID).State != queue.Active })
	if info := get(t, b2, failed.ID); info.State != queue.Retrying || info.Attempt != 1 || !slices.Equal(info.Errors, []string{"fail 1"}) {
		t.Errorf("snoozed after a failure: %s, attempt %d, errors %q; want retrying, 1, [fail 1]", info.State, info.Attempt, info.Errors)
	}
	info = waitState(t, b2, failed.ID, queue.Completed)
	mu.Lock()
	got = slices.Clone(calls[failed.ID])
	mu.Unlock()
	var attempts []int
	for _, c := range got {
		attempts = append(attempts, c.attempt)
	}
	if !slices.Equal(attempts, []int{1, 2, 2, 2}) {
		t.Errorf("runs saw Attempt %v, want [1 2 2 2] (fail, snooze, snooze, success)", attempts)
	}
	if info.Attempt != 2 || !slices.Equal(info.Errors, []string{"fail 1"}) {
		t.Errorf("completed after a failure and 2 snoozes: attempt %d, errors %q; want 2, [fail 1]", info.Attempt, info.Errors)
	}
}
