package sqlitestore

import (
	"context"
	"io/fs"
	"testing"
	"testing/fstest"
	"time"
)

// TestTimelineMigrationLeavesOldRowsNull: a row stored before migration
// 0003 comes back with every new timestamp nil, and a later run of its
// pipeline records them.
func TestTimelineMigrationLeavesOldRowsNull(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	before := fstest.MapFS{}
	for _, name := range []string{"0001_assets.sql", "0002_sweeps.sql"} {
		b, err := fs.ReadFile(migrations, name)
		if err != nil {
			t.Fatal(err)
		}
		before[name] = &fstest.MapFile{Data: b}
	}
	if err := db.Migrate(ctx, migrationLine, before); err != nil {
		t.Fatal(err)
	}
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli()
	if _, err := db.Write.ExecContext(ctx, `INSERT INTO assets (id, user_id, status, processing_job_id,
		filename, content_type, size, sha256, width, height, blob_key, attempts, created_at, updated_at,
		event_id, event_pending) VALUES ('old-1', 'u1', 'processing', 'job-old-1', 'a.jpg', 'image/jpeg',
		1, 'ab', 1, 1, 'blobs/old-1', 0, ?, ?, '', 0)`, created, created); err != nil {
		t.Fatal(err)
	}

	s, err := New(ctx, db)
	if err != nil {
		t.Fatalf("New over the old schema: %v", err)
	}
	a, err := s.Get(ctx, "old-1")
	if err != nil {
		t.Fatal(err)
	}
	if a.ReceivedAt != nil || a.EnqueuedAt != nil || a.StartedAt != nil || a.AnalyzedAt != nil || a.EventSentAt != nil {
		t.Fatalf("old row's timeline = %+v, want every timestamp nil", a.Timeline())
	}
	if tls, err := s.Timelines(ctx, time.Time{}, 10); err != nil || len(tls) != 0 {
		t.Fatalf("Timelines = %d, %v; want none (the old row has no receivedAt)", len(tls), err)
	}
	now := time.Now()
	if err := s.RecordAttempt(ctx, "old-1", "job-old-1", 1, now); err != nil {
		t.Fatal(err)
	}
	if a, err = s.Get(ctx, "old-1"); err != nil {
		t.Fatal(err)
	}
	if a.StartedAt == nil || a.StartedAt.UnixMilli() != now.UnixMilli() {
		t.Fatalf("after RecordAttempt: startedAt %v, want %v", a.StartedAt, now)
	}
}
