package pipeline_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/queue"
)

// With the AI service behind a breaker, an outage snoozes jobs instead of
// spending their attempts: the failures before the threshold count, the
// one that opens the breaker and every job after it are snoozed until the
// next probe, without an AI call; once the service answers a probe, jobs
// complete. A 4xx still fails its job at once.
func TestProcessJobSnoozesWhileTheAIServiceIsDown(t *testing.T) {
	t.Parallel()
	const (
		down = iota
		up
		refusing
	)
	var mode atomic.Int32
	e := newEnv(t, func(w http.ResponseWriter, r *http.Request, n int) {
		switch mode.Load() {
		case down:
			answer(503, nil, `{"error":"down"}`)(w, r, n)
		case up:
			answer(200, nil, okResult)(w, r, n)
		case refusing:
			answer(400, nil, `{"error":"not an image we read"}`)(w, r, n)
		}
	}, envOptions{})
	const interval = 2 * time.Second
	e.h.Analyzer = ai.NewBreaker(e.h.Analyzer, ai.BreakerConfig{Threshold: 3, ProbeInterval: interval, Now: e.clock.Now})
	ctx := context.Background()

	for i := 1; i <= 2; i++ {
		_, job := e.newAsset()
		err := e.h.ProcessJob(ctx, job)
		if _, snoozed := queue.SnoozeDelay(err); err == nil || snoozed || queue.IsPermanent(err) {
			t.Fatalf("failure %d below the threshold = %v; want a retryable error that counts", i, err)
		}
	}
	a, job := e.newAsset()
	err := e.h.ProcessJob(ctx, job)
	if d, ok := queue.SnoozeDelay(err); !ok || d != interval {
		t.Fatalf("the failure that opens the breaker = %v; want Snooze(%v)", err, interval)
	}
	calls := e.ai.calls()

	// Open: jobs snooze until the next probe without calling the AI, and
	// their assets keep processing with their attempt count.
	e.clock.Add(500 * time.Millisecond)
	b, jobB := e.newAsset()
	jobB.Attempt = 3
	b.Attempts = 2
	e.store.put(b)
	for _, j := range []*queue.Job{job, jobB} {
		err := e.h.ProcessJob(ctx, j)
		if d, ok := queue.SnoozeDelay(err); !ok || d != interval-500*time.Millisecond {
			t.Fatalf("job %s while open = %v; want Snooze(1.5s)", j.ID, err)
		}
	}
	if n := e.ai.calls(); n != calls {
		t.Fatalf("%d AI calls while the breaker was open, want 0", n-calls)
	}
	if got := e.store.get(t, b.ID); got.Status != asset.StatusProcessing || got.Attempts != 2 {
		t.Fatalf("snoozed asset: %s, attempts %d; want processing, 2 (unchanged)", got.Status, got.Attempts)
	}
	if got := e.store.get(t, a.ID); got.Status != asset.StatusProcessing || got.Attempts != 1 {
		t.Fatalf("asset of the job that opened the breaker: %s, attempts %d; want processing, 1", got.Status, got.Attempts)
	}
	if len(e.notes.attempts()) != 0 {
		t.Fatal("an event was sent for a snoozed job")
	}

	// The service is back; the probe (this job) closes the breaker.
	mode.Store(up)
	e.clock.Add(interval)
	if err := e.h.ProcessJob(ctx, job); err != nil {
		t.Fatalf("the probe after recovery: %v", err)
	}
	if err := e.h.ProcessJob(ctx, jobB); err != nil {
		t.Fatalf("a job after recovery: %v", err)
	}
	for id, attempts := range map[string]int{a.ID: 1, b.ID: 3} {
		if got := e.store.get(t, id); got.Status != asset.StatusDraft || got.Attempts != attempts {
			t.Errorf("asset %s after recovery: %s, attempts %d; want draft, %d", id, got.Status, got.Attempts, attempts)
		}
	}
	if n := len(e.notes.delivered()); n != 2 {
		t.Errorf("%d events after recovery, want 2", n)
	}

	// A refusal still fails its job at once.
	mode.Store(refusing)
	c, jobC := e.newAsset()
	if err := e.h.ProcessJob(ctx, jobC); !queue.IsPermanent(err) {
		t.Fatalf("a 400 behind the breaker = %v; want permanent", err)
	}
	if got := e.store.get(t, c.ID); got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != ai.CodeRejected {
		t.Errorf("refused asset: %s, %+v; want failed with %s", got.Status, got.Error, ai.CodeRejected)
	}
}
