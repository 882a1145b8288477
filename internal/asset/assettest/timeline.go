package assettest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// testTimelineMonotonic runs one asset through the pipeline's writes
// (Create, two attempts, Finish, EventSent) with known step times: every
// timestamp comes back as written, in the pipeline's order, and a second
// attempt does not move StartedAt.
func testTimelineMonotonic(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	a := newAsset("tl-1", "u1", t0) // received t0-40ms, enqueued t0
	mustCreate(t, s, a)
	started := t0.Add(250 * time.Millisecond)
	if err := s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 1, started); err != nil {
		t.Fatalf("RecordAttempt 1: %v", err)
	}
	if err := s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 2, started.Add(2*time.Second)); err != nil {
		t.Fatalf("RecordAttempt 2: %v", err)
	}
	out := draftOutcome(started.Add(3*time.Second), "evt-tl-1") // analyzed 5 ms before processed
	out.Attempts = 2
	mustFinish(t, s, a.ID, a.ProcessingJobID, out)
	sent := out.ProcessedAt.Add(7 * time.Millisecond)
	if err := s.EventSent(ctx, a.ID, "evt-tl-1", sent); err != nil {
		t.Fatalf("EventSent: %v", err)
	}

	got := mustGet(t, s, a.ID)
	want := finished(a, out)
	want.UpdatedAt = out.ProcessedAt
	want.StartedAt = &started
	want.EventSentAt = &sent
	want.EventPending = false
	assertAsset(t, "after the whole pipeline", got, want)
	assertMonotonic(t, got.Timeline())

	tls, err := s.Timelines(ctx, t0.Add(-time.Second), 10)
	if err != nil {
		t.Fatalf("Timelines: %v", err)
	}
	if len(tls) != 1 {
		t.Fatalf("Timelines = %d timelines, want 1", len(tls))
	}
	if d := diffTimeline(tls[0], got.Timeline()); d != "" {
		t.Fatalf("Timelines()[0] differs from the asset's: %s", d)
	}
}

// assertMonotonic checks that every timestamp of tl is set and none is
// before the one it follows.
func assertMonotonic(t *testing.T, tl asset.Timeline) {
	t.Helper()
	steps := timelineSteps(tl)
	for i, st := range steps {
		if st.at == nil {
			t.Fatalf("%s is nil, want set", st.name)
		}
		if i > 0 && st.at.Before(*steps[i-1].at) {
			t.Fatalf("%s %s is before %s %s", st.name, st.at.Format(time.RFC3339Nano),
				steps[i-1].name, steps[i-1].at.Format(time.RFC3339Nano))
		}
	}
}

type step struct {
	name string
	at   *time.Time
}

func timelineSteps(tl asset.Timeline) []step {
	return []step{{"ReceivedAt", tl.ReceivedAt}, {"EnqueuedAt", tl.EnqueuedAt}, {"StartedAt", tl.StartedAt},
		{"AnalyzedAt", tl.AnalyzedAt}, {"ProcessedAt", tl.ProcessedAt}, {"EventSentAt", tl.EventSentAt}}
}

func diffTimeline(got, want asset.Timeline) string {
	w := timelineSteps(want)
	for i, g := range timelineSteps(got) {
		if msg := diffOptTime(g.at, w[i].at); msg != "" {
			return g.name + ": " + msg
		}
	}
	return ""
}

// testTimelinesWindow: Timelines returns runs received at or after since,
// newest first, up to limit, whoever owns them; an asset stored without
// ReceivedAt (before the timestamps existed) is never returned.
func testTimelinesWindow(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	var as []*asset.Asset
	for i := range 5 {
		as = append(as, newAsset(fmt.Sprint("tw-", i), fmt.Sprint("u", i%2), t0.Add(time.Duration(i)*time.Second)))
	}
	legacy := newAsset("tw-legacy", "u1", t0.Add(10*time.Second))
	legacy.ReceivedAt, legacy.EnqueuedAt = nil, nil
	mustCreate(t, s, append(as, legacy)...)

	since := *as[1].ReceivedAt // as[1] is on the boundary: included
	got, err := s.Timelines(ctx, since, 10)
	if err != nil {
		t.Fatalf("Timelines: %v", err)
	}
	wantOrder := []*asset.Asset{as[4], as[3], as[2], as[1]}
	if len(got) != len(wantOrder) {
		t.Fatalf("Timelines(since as[1], 10) = %d timelines, want %d (as[4..1], not as[0] nor the legacy row)", len(got), len(wantOrder))
	}
	for i, w := range wantOrder {
		if d := diffTimeline(got[i], w.Timeline()); d != "" {
			t.Fatalf("Timelines()[%d] is not %s's: %s", i, w.ID, d)
		}
	}
	got, err = s.Timelines(ctx, since, 2)
	if err != nil {
		t.Fatalf("Timelines limit 2: %v", err)
	}
	if len(got) != 2 || diffTimeline(got[0], as[4].Timeline()) != "" || diffTimeline(got[1], as[3].Timeline()) != "" {
		t.Fatalf("Timelines(since, 2) = %d timelines, want the newest two (as[4], as[3])", len(got))
	}
	if _, err := s.Timelines(ctx, since, 0); err == nil {
		t.Fatalf("Timelines with limit 0 = nil error, want one")
	}
}
