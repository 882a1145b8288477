package pipeline_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/wire"
)

// recorder is a pipeline.Observer that keeps what it is told.
type recorder struct {
	mu        sync.Mutex
	waits     []time.Duration
	outcomes  []string
	calls     []time.Duration
	finished  []*asset.Asset
	eventLags []time.Duration
}

func (r *recorder) QueueWait(d time.Duration) {
	r.mu.Lock()
	r.waits = append(r.waits, d)
	r.mu.Unlock()
}
func (r *recorder) AICall(o string, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes, r.calls = append(r.outcomes, o), append(r.calls, took)
}
func (r *recorder) Finished(a *asset.Asset) {
	r.mu.Lock()
	r.finished = append(r.finished, a)
	r.mu.Unlock()
}
func (r *recorder) EventSent(lag time.Duration) {
	r.mu.Lock()
	r.eventLags = append(r.eventLags, lag)
	r.mu.Unlock()
}

// TestObserverGetsEachStage: with an AI service that takes exactly 200 ms
// of the handler's clock, the observer gets the queue wait once (first
// attempt only), each attempt's outcome class and duration, the final
// asset with its timeline, and the event's lag.
func TestObserverGetsEachStage(t *testing.T) {
	t.Parallel()
	const aiTook = 200 * time.Millisecond
	var e *env
	e = newEnv(t, func(w http.ResponseWriter, r *http.Request, n int) {
		e.clock.Add(aiTook)
		if n == 1 {
			answer(500, nil, `{"error":"boom"}`)(w, r, n)
			return
		}
		answer(200, nil, `{"label":"card"}`)(w, r, n)
	}, envOptions{})
	rec := &recorder{}
	e.h.Observer = rec
	a, _ := e.newAsset()
	// The job was enqueued 3 s before its first attempt (the payload's
	// stamp has millisecond precision, as the intake writes it).
	enqueued := e.clock.Now().Add(-3 * time.Second).Truncate(time.Millisecond)
	wantWait := e.clock.Now().Sub(enqueued)
	received := enqueued.Add(-50 * time.Millisecond)
	stored := e.store.get(t, a.ID)
	stored.EnqueuedAt, stored.ReceivedAt = &enqueued, &received
	e.store.put(stored)
	j, err := wire.NewJob(context.Background(), stored, enqueued)
	if err != nil {
		t.Fatal(err)
	}
	j.Attempt, j.MaxAttempts = 1, maxAttempts
	job := &j

	if err := e.h.ProcessJob(context.Background(), job); err == nil {
		t.Fatal("attempt 1 against a 500: nil error, want a retry")
	}
	job.Attempt = 2
	if err := e.h.ProcessJob(context.Background(), job); err != nil {
		t.Fatalf("attempt 2: %v", err)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.waits) != 1 || rec.waits[0] != wantWait {
		t.Errorf("queue waits = %v, want one of %v (the first attempt's)", rec.waits, wantWait)
	}
	if want := []string{pipeline.OutcomeRetryable, pipeline.OutcomeOK}; len(rec.outcomes) != 2 || rec.outcomes[0] != want[0] || rec.outcomes[1] != want[1] {
		t.Errorf("outcomes = %v, want %v", rec.outcomes, want)
	}
	for i, d := range rec.calls {
		if d != aiTook {
			t.Errorf("AI call %d took %v by the handler's clock, want %v", i+1, d, aiTook)
		}
	}
	if len(rec.finished) != 1 {
		t.Fatalf("finished %d times, want once", len(rec.finished))
	}
	// The store keeps milliseconds: processedAt is up to 1 ms early.
	f := rec.finished[0]
	wantE2E := 3*time.Second + 50*time.Millisecond + 2*aiTook
	if f.Status != asset.StatusDraft || f.Attempts != 2 || f.AnalyzedAt == nil || f.ProcessedAt == nil {
		t.Fatalf("finished asset: status %s, attempts %d, analyzed %v; want draft after 2 attempts", f.Status, f.Attempts, f.AnalyzedAt)
	}
	if d := f.ProcessedAt.Sub(*f.ReceivedAt); d > wantE2E || d <= wantE2E-time.Millisecond {
		t.Errorf("end to end %v, want %v (3.05 s before the job, then two 200 ms AI calls)", d, wantE2E)
	}
	if len(rec.eventLags) != 1 || rec.eventLags[0] < 0 || rec.eventLags[0] >= time.Millisecond {
		t.Errorf("event lags = %v, want one under 1 ms (the clock did not move)", rec.eventLags)
	}
	got := e.store.get(t, a.ID)
	if got.EventSentAt == nil || got.StartedAt == nil || got.StartedAt.After(*got.AnalyzedAt) {
		t.Errorf("stored timeline %+v: want startedAt ≤ analyzedAt and eventSentAt set", got.Timeline())
	}
}
