package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// With LogEvents, Finish writes the event in its own transaction and
// records it sent there: nothing is owed for the relay. An event the hook
// refuses fails that Finish alone, undoing its update but not the writes
// that share its group commit.
func TestFinishLogsItsEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := newStore(t)
	if _, err := db.Write.ExecContext(ctx, `CREATE TABLE logged (event_id TEXT PRIMARY KEY, asset_id TEXT)`); err != nil {
		t.Fatal(err)
	}
	refuse := errors.New("refused")
	var mu sync.Mutex
	var hookSaw []*asset.Asset
	s.LogEvents(func(ctx context.Context, tx *sql.Tx, a *asset.Asset) error {
		mu.Lock()
		hookSaw = append(hookSaw, a)
		mu.Unlock()
		if _, err := tx.ExecContext(ctx, `INSERT INTO logged VALUES (?, ?)`, a.EventID, a.ID); err != nil {
			return err
		}
		if a.ID == "bad" {
			return refuse
		}
		return nil
	})
	for _, id := range []string{"good", "bad", "other"} {
		if err := s.Create(ctx, testAsset(id)); err != nil {
			t.Fatal(err)
		}
	}
	processed := time.Now().Truncate(time.Millisecond)
	out := func(ev string) asset.Outcome {
		return asset.Outcome{Status: asset.StatusDraft, Attempts: 1, ProcessedAt: processed, EventID: ev}
	}

	// Three Finishes at once, so that they may share a group; "other" is a
	// RecordAttempt's neighbour that must survive "bad".
	var wg sync.WaitGroup
	errs := map[string]error{}
	var emu sync.Mutex
	for _, id := range []string{"good", "bad"} {
		wg.Go(func() {
			_, err := s.Finish(ctx, id, "job-"+id, out("ev-"+id))
			emu.Lock()
			errs[id] = err
			emu.Unlock()
		})
	}
	wg.Go(func() {
		err := s.RecordAttempt(ctx, "other", "job-other", 2, processed)
		emu.Lock()
		errs["other"] = err
		emu.Unlock()
	})
	wg.Wait()

	if errs["good"] != nil || errs["other"] != nil {
		t.Fatalf("Finish(good) = %v, RecordAttempt(other) = %v; want both nil", errs["good"], errs["other"])
	}
	if !errors.Is(errs["bad"], refuse) {
		t.Fatalf("Finish(bad) = %v, want the hook's error", errs["bad"])
	}
	for _, a := range hookSaw {
		if a.ID == "good" && (a.Status != asset.StatusDraft || a.EventID != "ev-good" || a.EventPending || a.EventSentAt == nil) {
			t.Errorf("the hook got %+v; want the final state, its event recorded sent", a)
		}
	}

	good := mustGet(t, s, "good")
	if good.Status != asset.StatusDraft || good.EventPending || good.EventSentAt == nil || good.EventSentAt.Before(processed) {
		t.Errorf("good after Finish: status %s, eventPending %v, eventSentAt %v; want draft, false, at or after processedAt %v",
			good.Status, good.EventPending, good.EventSentAt, processed)
	}
	if bad := mustGet(t, s, "bad"); bad.Status != asset.StatusProcessing || bad.EventID != "" {
		t.Errorf("bad after a refused event: status %s, eventId %q; want processing, none (its update undone)", bad.Status, bad.EventID)
	}
	if other := mustGet(t, s, "other"); other.Attempts != 2 {
		t.Errorf("other: attempts %d, want 2 (its write shares the group of a refused event)", other.Attempts)
	}
	var logged []string
	rows, err := db.Read.QueryContext(ctx, `SELECT asset_id FROM logged ORDER BY asset_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		rows.Scan(&id)
		logged = append(logged, id)
	}
	if len(logged) != 1 || logged[0] != "good" {
		t.Errorf("events logged: %q, want only good's (bad's insert undone with its update)", logged)
	}
	if pending, err := s.PendingEvents(ctx, 10); err != nil || len(pending) != 0 {
		t.Errorf("PendingEvents = %d, %v; want none owed", len(pending), err)
	}
}

func mustGet(t *testing.T, s *Store, id string) *asset.Asset {
	t.Helper()
	a, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
