package assettest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// draftOutcome is a successful analysis finished at processedAt.
func draftOutcome(processedAt time.Time, eventID string) asset.Outcome {
	analyzed := processedAt.Add(-5 * time.Millisecond)
	return asset.Outcome{
		AnalyzedAt:  &analyzed,
		Status:      asset.StatusDraft,
		AIMetadata:  json.RawMessage(`{"provider":"builtin","width":4032,"verdict":"ok","colors":["#102030"]}`),
		Attempts:    1,
		ProcessedAt: processedAt,
		EventID:     eventID,
	}
}

func failedOutcome(processedAt time.Time, eventID string) asset.Outcome {
	return asset.Outcome{
		Status:      asset.StatusFailed,
		Error:       &asset.Error{Code: "ai_unavailable", Message: "the AI service answered 503 four times"},
		Attempts:    4,
		ProcessedAt: processedAt,
		EventID:     eventID,
	}
}

// finished is what a asset must become when Finish applies out.
func finished(a *asset.Asset, out asset.Outcome) *asset.Asset {
	w := a.Clone()
	w.Status = out.Status
	w.AIMetadata = out.AIMetadata
	w.Error = out.Error
	w.Attempts = out.Attempts
	p := out.ProcessedAt
	w.ProcessedAt = &p
	w.UpdatedAt = out.ProcessedAt
	w.EventID = out.EventID
	w.EventPending = true
	w.AnalyzedAt = out.AnalyzedAt
	w.EventSentAt = nil
	return w
}

func testRecordAttempt(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	a := newAsset("ra-1", "u1", t0)
	mustCreate(t, s, a)

	now := t0.Add(5 * time.Second)
	if err := s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 2, now); err != nil {
		t.Fatalf("RecordAttempt under the asset's job: %v", err)
	}
	want := a.Clone()
	want.Attempts = 2
	want.UpdatedAt = now
	started := now
	want.StartedAt = &started
	assertAsset(t, "after RecordAttempt", mustGet(t, s, a.ID), want)

	// A later attempt keeps the first one's start.
	later := now.Add(3 * time.Second)
	if err := s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 3, later); err != nil {
		t.Fatalf("second RecordAttempt: %v", err)
	}
	want.Attempts = 3
	want.UpdatedAt = later
	assertAsset(t, "after a second RecordAttempt", mustGet(t, s, a.ID), want)
	now = later

	if err := s.RecordAttempt(ctx, a.ID, "job-other", 3, now.Add(time.Second)); !errors.Is(err, asset.ErrConflict) {
		t.Fatalf("RecordAttempt under another job = %v, want asset.ErrConflict", err)
	}
	assertUnchanged(t, s, want)

	if err := s.RecordAttempt(ctx, "ra-missing", "job-ra-missing", 1, now); !errors.Is(err, asset.ErrNotFound) {
		t.Fatalf("RecordAttempt on an unknown id = %v, want asset.ErrNotFound", err)
	}

	out := draftOutcome(now.Add(time.Second), "evt-ra-1")
	mustFinish(t, s, a.ID, a.ProcessingJobID, out)
	final := finished(want, out)
	if err := s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 3, now.Add(2*time.Second)); !errors.Is(err, asset.ErrConflict) {
		t.Fatalf("RecordAttempt on a finished asset = %v, want asset.ErrConflict", err)
	}
	assertUnchanged(t, s, final)
}

func testFinishDraft(t *testing.T, s asset.Store) {
	t0 := baseTime()
	a := newAsset("fd-1", "u1", t0)
	other := newAsset("fd-2", "u1", t0)
	mustCreate(t, s, a, other)

	out := draftOutcome(t0.Add(3*time.Second), "evt-fd-1")
	got := mustFinish(t, s, a.ID, a.ProcessingJobID, out)
	want := finished(a, out)
	assertAsset(t, "Finish result", got, want)
	assertAsset(t, "Get after Finish", mustGet(t, s, a.ID), want)
	assertUnchanged(t, s, other)
}

// testFinishFailed also checks that an outcome carrying both an error and
// partial metadata keeps both.
func testFinishFailed(t *testing.T, s asset.Store) {
	t0 := baseTime()
	a := newAsset("ff-1", "u1", t0)
	mustCreate(t, s, a)

	out := failedOutcome(t0.Add(time.Minute), "evt-ff-1")
	out.AIMetadata = json.RawMessage(`{"partial":true}`)
	got := mustFinish(t, s, a.ID, a.ProcessingJobID, out)
	want := finished(a, out)
	assertAsset(t, "Finish result", got, want)
	assertAsset(t, "Get after Finish", mustGet(t, s, a.ID), want)
}

func testFinishWrongJob(t *testing.T, s asset.Store) {
	a := newAsset("fw-1", "u1", baseTime())
	mustCreate(t, s, a)
	got, err := s.Finish(context.Background(), a.ID, "job-someone-else", draftOutcome(baseTime().Add(time.Second), "evt-fw"))
	if !errors.Is(err, asset.ErrConflict) {
		t.Fatalf("Finish under another job = %+v, %v; want asset.ErrConflict", got, err)
	}
	assertUnchanged(t, s, a)
}

// testFinishAlreadyFinal: a repeated job (at-least-once delivery) finds the
// asset final and must change nothing, not even the owed event.
func testFinishAlreadyFinal(t *testing.T, s asset.Store) {
	t0 := baseTime()
	a := newAsset("fa-1", "u1", t0)
	mustCreate(t, s, a)
	first := draftOutcome(t0.Add(time.Second), "evt-fa-first")
	mustFinish(t, s, a.ID, a.ProcessingJobID, first)
	want := finished(a, first)

	for _, out := range []asset.Outcome{
		draftOutcome(t0.Add(2*time.Second), "evt-fa-second"),
		failedOutcome(t0.Add(2*time.Second), "evt-fa-second"),
	} {
		got, err := s.Finish(context.Background(), a.ID, a.ProcessingJobID, out)
		if !errors.Is(err, asset.ErrConflict) {
			t.Fatalf("second Finish (%s) = %+v, %v; want asset.ErrConflict", out.Status, got, err)
		}
		assertUnchanged(t, s, want)
	}
}

func testFinishNotFound(t *testing.T, s asset.Store) {
	_, err := s.Finish(context.Background(), "fnf-missing", "job-fnf-missing", draftOutcome(baseTime(), "evt-fnf"))
	if !errors.Is(err, asset.ErrNotFound) {
		t.Fatalf("Finish on an unknown id = %v, want asset.ErrNotFound", err)
	}
}

// testFinishConcurrent races many Finish calls for one asset under its job:
// exactly one applies its outcome; every other one gets ErrConflict.
func testFinishConcurrent(t *testing.T, s asset.Store) {
	t0 := baseTime()
	a := newAsset("fc-1", "u1", t0)
	mustCreate(t, s, a)

	const n = 24
	outs := make([]asset.Outcome, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		if i%2 == 0 {
			outs[i] = draftOutcome(t0.Add(time.Duration(i+1)*time.Second), fmt.Sprintf("evt-fc-%d", i))
		} else {
			outs[i] = failedOutcome(t0.Add(time.Duration(i+1)*time.Second), fmt.Sprintf("evt-fc-%d", i))
		}
		outs[i].Attempts = i + 1
		wg.Go(func() {
			<-start
			_, errs[i] = s.Finish(context.Background(), a.ID, a.ProcessingJobID, outs[i])
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("Finish calls %d and %d both succeeded", winner, i)
			}
			winner = i
		case !errors.Is(err, asset.ErrConflict):
			t.Fatalf("Finish call %d: %v, want nil or asset.ErrConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no concurrent Finish call succeeded")
	}
	assertAsset(t, "after the race", mustGet(t, s, a.ID), finished(a, outs[winner]))
}

func testReprocess(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	a := newAsset("rp-1", "u1", t0)
	mustCreate(t, s, a)
	if err := s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 1, t0.Add(time.Millisecond)); err != nil {
		t.Fatalf("RecordAttempt: %v", err)
	}
	out := failedOutcome(t0.Add(time.Second), "evt-rp-1")
	out.AIMetadata = json.RawMessage(`{"partial":true}`)
	mustFinish(t, s, a.ID, a.ProcessingJobID, out)
	if err := s.EventSent(ctx, a.ID, "evt-rp-1", t0.Add(2*time.Second)); err != nil {
		t.Fatalf("EventSent: %v", err)
	}

	now := t0.Add(time.Hour)
	got, err := s.Reprocess(ctx, a.ID, "job-rp-1-retry", now)
	if err != nil {
		t.Fatalf("Reprocess of a failed asset: %v", err)
	}
	want := a.Clone()
	want.ProcessingJobID = "job-rp-1-retry"
	want.UpdatedAt = now
	// A new run: received and enqueued now, no later timestamp.
	want.ReceivedAt, want.EnqueuedAt = &now, &now
	// Status processing, Attempts 0, no metadata, error, processedAt or event:
	// the same shape as at Create.
	assertAsset(t, "Reprocess result", got, want)
	assertAsset(t, "Get after Reprocess", mustGet(t, s, a.ID), want)

	// The old job is now a repeat; the new one owns the asset.
	if _, err := s.Finish(ctx, a.ID, a.ProcessingJobID, draftOutcome(now, "evt-old")); !errors.Is(err, asset.ErrConflict) {
		t.Fatalf("Finish under the job before Reprocess = %v, want asset.ErrConflict", err)
	}
	out2 := draftOutcome(now.Add(time.Second), "evt-rp-2")
	assertAsset(t, "Finish under the new job", mustFinish(t, s, a.ID, "job-rp-1-retry", out2), finished(want, out2))
}

func testReprocessConflict(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	processing := newAsset("rpc-processing", "u1", t0)
	draft := newAsset("rpc-draft", "u1", t0)
	mustCreate(t, s, processing, draft)
	out := draftOutcome(t0.Add(time.Second), "evt-rpc")
	mustFinish(t, s, draft.ID, draft.ProcessingJobID, out)

	for _, before := range []*asset.Asset{processing, finished(draft, out)} {
		got, err := s.Reprocess(ctx, before.ID, "job-new", t0.Add(time.Hour))
		if !errors.Is(err, asset.ErrConflict) {
			t.Fatalf("Reprocess of a %s asset = %+v, %v; want asset.ErrConflict", before.Status, got, err)
		}
		assertUnchanged(t, s, before)
	}

	if _, err := s.Reprocess(ctx, "rpc-missing", "job-new", t0); !errors.Is(err, asset.ErrNotFound) {
		t.Fatalf("Reprocess of an unknown id = %v, want asset.ErrNotFound", err)
	}
}
