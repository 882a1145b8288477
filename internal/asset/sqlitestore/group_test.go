package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// TestWorkerWritesShareACommit: writes that arrive while the write
// connection is busy commit in one group, and each caller still gets its
// own outcome: success, asset.ErrConflict (wrong job, already finished) or
// asset.ErrNotFound.
func TestWorkerWritesShareACommit(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, db := newStore(t)
	const n = 8
	as := make([]*asset.Asset, n)
	for i := range as {
		as[i] = testAsset(fmt.Sprint("g-", i))
	}
	if err := s.Create(ctx, as...); err != nil {
		t.Fatal(err)
	}

	// Hold the write connection so that every write below queues up.
	block, err := db.Write.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		what string
		err  error
	}
	results := make(chan result, 4*n)
	var wg sync.WaitGroup
	for i, a := range as {
		wg.Go(func() {
			err := s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 2, a.CreatedAt.Add(time.Second))
			results <- result{"attempt " + a.ID, err}
		})
		wg.Go(func() {
			err := s.RecordAttempt(ctx, a.ID, "other-job", 2, a.CreatedAt)
			results <- result{"conflict " + a.ID, err}
		})
		wg.Go(func() {
			err := s.EventSent(ctx, fmt.Sprint("missing-", i), "evt", time.Now())
			results <- result{"event sent of a missing asset", err}
		})
		wg.Go(func() {
			_, err := s.Finish(ctx, fmt.Sprint("missing-", i), "job", asset.Outcome{
				Status: asset.StatusDraft, EventID: "evt", ProcessedAt: a.CreatedAt})
			results <- result{"not found", err}
		})
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		s.w.mu.Lock()
		queued := len(s.w.waiting)
		s.w.mu.Unlock()
		// One leader waits for the connection with its own write; the rest
		// wait for the next group.
		if queued == 4*n-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued after 30 s, want %d", queued, 4*n-1)
		}
	}
	if err := block.Rollback(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(results)
	for r := range results {
		var want error
		switch r.what[:4] {
		case "conf":
			want = asset.ErrConflict
		case "not ":
			want = asset.ErrNotFound
		}
		if (want == nil && r.err != nil) || (want != nil && !errors.Is(r.err, want)) {
			t.Errorf("%s: %v, want %v", r.what, r.err, want)
		}
	}
	if s.w.groups != 2 {
		t.Errorf("%d group commits for %d writes queued together, want 2", s.w.groups, 4*n)
	}
	for _, a := range as {
		got, err := s.Get(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Attempts != 2 || !got.UpdatedAt.Equal(a.CreatedAt.Add(time.Second)) {
			t.Errorf("%s: attempts %d updated %v after the group", a.ID, got.Attempts, got.UpdatedAt)
		}
	}

	// Finish in a group: the returned asset is the committed row.
	got, err := s.Finish(ctx, as[0].ID, as[0].ProcessingJobID, asset.Outcome{
		Status: asset.StatusDraft, Attempts: 2, EventID: "evt-0", ProcessedAt: as[0].CreatedAt.Add(time.Minute)})
	if err != nil || got.Status != asset.StatusDraft || !got.EventPending {
		t.Fatalf("Finish = %+v, %v", got, err)
	}
	if err := s.EventSent(ctx, as[0].ID, "evt-0", time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(ctx, as[0].ID); got.EventPending {
		t.Fatal("event still owed after EventSent")
	}
}

// TestWorkerWriteWithDoneContext: a write whose context has ended does not
// run; the others of its group do.
func TestWorkerWriteWithDoneContext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	a := testAsset("dc-1")
	if err := s.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.RecordAttempt(done, a.ID, a.ProcessingJobID, 3, a.CreatedAt); !errors.Is(err, context.Canceled) {
		t.Fatalf("RecordAttempt with a done context = %v, want context.Canceled", err)
	}
	if got, _ := s.Get(ctx, a.ID); got.Attempts != 0 {
		t.Fatalf("attempts = %d after a cancelled RecordAttempt", got.Attempts)
	}
}
