package assettest

import (
	"context"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

func sentAt() time.Time { return baseTime().Add(time.Minute) }

func pending(t *testing.T, s asset.Store, limit int) []*asset.Asset {
	t.Helper()
	as, err := s.PendingEvents(context.Background(), limit)
	if err != nil {
		t.Fatalf("PendingEvents(%d): %v", limit, err)
	}
	return as
}

// eventSent reports the event sent at baseTime plus a minute.
func eventSent(t *testing.T, s asset.Store, id, eventID string) {
	t.Helper()
	if err := s.EventSent(context.Background(), id, eventID, sentAt()); err != nil {
		t.Fatalf("EventSent(%q, %q): %v", id, eventID, err)
	}
}

// testPendingEventsOrder: owed events come oldest first (by the time the
// final state was reached), whoever owns them, with the whole asset.
func testPendingEventsOrder(t *testing.T, s asset.Store) {
	t0 := baseTime()
	a := newAsset("pe-a", "u1", t0)
	b := newAsset("pe-b", "u2", t0.Add(time.Second))
	c := newAsset("pe-c", "u1", t0.Add(2*time.Second))
	idle := newAsset("pe-idle", "u1", t0)
	mustCreate(t, s, a, b, c, idle)
	if got := pending(t, s, 10); len(got) != 0 {
		t.Fatalf("PendingEvents before any Finish = %v, want none", ids(got))
	}

	// Finished in the order a, b, c but with processedAt c < a < b.
	outA := draftOutcome(t0.Add(20*time.Second), "evt-pe-a")
	outB := failedOutcome(t0.Add(30*time.Second), "evt-pe-b")
	outC := draftOutcome(t0.Add(10*time.Second), "evt-pe-c")
	mustFinish(t, s, a.ID, a.ProcessingJobID, outA)
	mustFinish(t, s, b.ID, b.ProcessingJobID, outB)
	mustFinish(t, s, c.ID, c.ProcessingJobID, outC)
	want := []*asset.Asset{finished(c, outC), finished(a, outA), finished(b, outB)}

	got := pending(t, s, 10)
	assertIDs(t, "PendingEvents(10)", got, want)
	for i := range want {
		assertAsset(t, "PendingEvents", got[i], want[i])
	}
	assertIDs(t, "PendingEvents(2)", pending(t, s, 2), want[:2])
}

// testEventSent: only the owed event id clears the mark, and clearing it
// changes nothing else.
func testEventSent(t *testing.T, s asset.Store) {
	t0 := baseTime()
	a := newAsset("es-a", "u1", t0)
	b := newAsset("es-b", "u1", t0)
	mustCreate(t, s, a, b)
	outA := draftOutcome(t0.Add(time.Second), "evt-es-a")
	outB := draftOutcome(t0.Add(2*time.Second), "evt-es-b")
	mustFinish(t, s, a.ID, a.ProcessingJobID, outA)
	mustFinish(t, s, b.ID, b.ProcessingJobID, outB)
	wantA, wantB := finished(a, outA), finished(b, outB)

	eventSent(t, s, a.ID, "evt-es-b") // another asset's event id
	eventSent(t, s, a.ID, "evt-unknown")
	assertUnchanged(t, s, wantA)

	eventSent(t, s, a.ID, "evt-es-a")
	wantA.EventPending = false
	sent := sentAt()
	wantA.EventSentAt = &sent
	assertUnchanged(t, s, wantA)
	assertUnchanged(t, s, wantB)
	assertIDs(t, "PendingEvents after EventSent", pending(t, s, 10), []*asset.Asset{wantB})

	// Sending again (a relay that crashed after publishing) is harmless.
	eventSent(t, s, a.ID, "evt-es-a")
	assertUnchanged(t, s, wantA)
}

// testEventSentAcrossReprocess: a relay that publishes the old final
// state's event late must not clear the event owed by the new final state.
func testEventSentAcrossReprocess(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	a := newAsset("esr-1", "u1", t0)
	mustCreate(t, s, a)
	mustFinish(t, s, a.ID, a.ProcessingJobID, failedOutcome(t0.Add(time.Second), "evt-esr-1"))
	if _, err := s.Reprocess(ctx, a.ID, "job-esr-retry", t0.Add(time.Minute)); err != nil {
		t.Fatalf("Reprocess: %v", err)
	}
	if got := pending(t, s, 10); len(got) != 0 {
		t.Fatalf("PendingEvents after Reprocess = %v, want none", ids(got))
	}
	out := draftOutcome(t0.Add(2*time.Minute), "evt-esr-2")
	final := mustFinish(t, s, a.ID, "job-esr-retry", out)

	eventSent(t, s, a.ID, "evt-esr-1")
	assertUnchanged(t, s, final)
	assertIDs(t, "PendingEvents", pending(t, s, 10), []*asset.Asset{final})

	eventSent(t, s, a.ID, "evt-esr-2")
	if got := pending(t, s, 10); len(got) != 0 {
		t.Fatalf("PendingEvents after the owed event was sent = %v, want none", ids(got))
	}
}

func testDelete(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	a := newAsset("del-a", "u1", t0)
	b := newAsset("del-b", "u1", t0.Add(time.Second))
	c := newAsset("del-c", "u1", t0.Add(2*time.Second))
	mustCreate(t, s, a, b, c)
	mustFinish(t, s, c.ID, c.ProcessingJobID, draftOutcome(t0.Add(time.Minute), "evt-del-c"))

	if err := s.Delete(ctx, a.ID, "del-missing", c.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	assertNotFound(t, s, a.ID)
	assertNotFound(t, s, c.ID)
	assertUnchanged(t, s, b)
	assertIDs(t, "List after Delete", list(t, s, "u1", asset.ListQuery{Limit: 10}).Assets, []*asset.Asset{b})
	if got := pending(t, s, 10); len(got) != 0 {
		t.Fatalf("PendingEvents after deleting the finished asset = %v, want none", ids(got))
	}

	if err := s.Delete(ctx); err != nil {
		t.Fatalf("Delete() with no ids = %v, want nil", err)
	}
	if err := s.Delete(ctx, a.ID); err != nil {
		t.Fatalf("Delete of an already deleted id = %v, want nil", err)
	}
	// A deleted id can be used again (Delete undoes a Create).
	mustCreate(t, s, a)
	assertUnchanged(t, s, a)
}

func testPing(t *testing.T, s asset.Store) {
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping on a fresh store: %v", err)
	}
}
