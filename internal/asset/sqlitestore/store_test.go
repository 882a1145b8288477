package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/assettest"
	"github.com/klectr/klectr/internal/sqlitedb"
)

func openDB(tb testing.TB) *sqlitedb.DB {
	tb.Helper()
	db, err := sqlitedb.Open(context.Background(), filepath.Join(tb.TempDir(), "klectr.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func newStore(tb testing.TB) (*Store, *sqlitedb.DB) {
	tb.Helper()
	db := openDB(tb)
	s, err := New(context.Background(), db)
	if err != nil {
		tb.Fatal(err)
	}
	return s, db
}

func TestStore(t *testing.T) {
	t.Parallel()
	assettest.TestStore(t, func(t *testing.T) asset.Store {
		s, _ := newStore(t)
		return s
	})
}

func testAsset(id string) *asset.Asset {
	now := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	return &asset.Asset{
		ID: id, UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: "job-" + id,
		Filename: id + ".jpg", ContentType: "image/jpeg", Size: 1000, SHA256: strings.Repeat("0", 64),
		Width: 10, Height: 10, BlobKey: "blobs/" + id, CreatedAt: now, UpdatedAt: now,
	}
}

func assertMissing(t *testing.T, s *Store, id string) {
	t.Helper()
	if _, err := s.Get(context.Background(), id); !errors.Is(err, asset.ErrNotFound) {
		t.Fatalf("Get(%q) = %v, want asset.ErrNotFound", id, err)
	}
}

func assertPresent(t *testing.T, s *Store, id string) {
	t.Helper()
	if _, err := s.Get(context.Background(), id); err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
}

// TestCreateTx: the app commits assets with their jobs in one transaction;
// what it rolls back must leave nothing, what it commits must be there.
func TestCreateTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := newStore(t)
	// Stands in for River's job table in the same transaction.
	if _, err := db.Write.ExecContext(ctx, `CREATE TABLE jobs (asset_id TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	enqueue := func(tx *sql.Tx, id string) {
		t.Helper()
		if _, err := tx.ExecContext(ctx, `INSERT INTO jobs VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
	}
	jobs := func() int {
		t.Helper()
		var n int
		if err := db.Read.QueryRowContext(ctx, `SELECT count(*) FROM jobs`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("rolled back", func(t *testing.T) {
		tx, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CreateTx(ctx, tx, testAsset("rb-1"), testAsset("rb-2")); err != nil {
			t.Fatal(err)
		}
		enqueue(tx, "rb-1")
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		assertMissing(t, s, "rb-1")
		assertMissing(t, s, "rb-2")
		if n := jobs(); n != 0 {
			t.Fatalf("%d jobs after rollback, want 0", n)
		}
	})

	t.Run("committed", func(t *testing.T) {
		tx, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CreateTx(ctx, tx, testAsset("c-1"), testAsset("c-2")); err != nil {
			t.Fatal(err)
		}
		enqueue(tx, "c-1")
		enqueue(tx, "c-2")
		// Not visible to readers before the commit.
		assertMissing(t, s, "c-1")
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		assertPresent(t, s, "c-1")
		assertPresent(t, s, "c-2")
		if n := jobs(); n != 2 {
			t.Fatalf("%d jobs after commit, want 2", n)
		}
	})

	// A duplicate undoes only what this CreateTx inserted; the transaction
	// stays usable and keeps its earlier work.
	t.Run("duplicate keeps the transaction", func(t *testing.T) {
		tx, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := s.CreateTx(ctx, tx, testAsset("d-1")); err != nil {
			t.Fatal(err)
		}
		err = s.CreateTx(ctx, tx, testAsset("d-2"), testAsset("d-1"))
		if !errors.Is(err, asset.ErrDuplicate) {
			t.Fatalf("CreateTx with a duplicate = %v, want asset.ErrDuplicate", err)
		}
		enqueue(tx, "d-1")
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		assertPresent(t, s, "d-1")
		assertMissing(t, s, "d-2")
	})
}

func TestReprocessTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := newStore(t)
	a := testAsset("r-1")
	if err := s.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	out := asset.Outcome{Status: asset.StatusFailed, Error: &asset.Error{Code: "x", Message: "y"},
		Attempts: 4, ProcessedAt: a.CreatedAt.Add(time.Second), EventID: "evt-1"}
	if _, err := s.Finish(ctx, a.ID, a.ProcessingJobID, out); err != nil {
		t.Fatal(err)
	}
	reprocess := func(commit bool) {
		t.Helper()
		tx, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		got, err := s.ReprocessTx(ctx, tx, a.ID, "job-r-1-retry", a.CreatedAt.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != asset.StatusProcessing || got.ProcessingJobID != "job-r-1-retry" {
			t.Fatalf("ReprocessTx returned status %s job %s", got.Status, got.ProcessingJobID)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}

	reprocess(false)
	if got, err := s.Get(ctx, a.ID); err != nil || got.Status != asset.StatusFailed || got.ProcessingJobID != a.ProcessingJobID {
		t.Fatalf("after rollback: %+v, %v; want the failed asset under its old job", got, err)
	}
	reprocess(true)
	if got, err := s.Get(ctx, a.ID); err != nil || got.Status != asset.StatusProcessing || got.ProcessingJobID != "job-r-1-retry" {
		t.Fatalf("after commit: %+v, %v; want processing under the new job", got, err)
	}
}

// TestNewIsIdempotent: every start runs New on the same file.
func TestNewIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := newStore(t)
	if err := s.Create(ctx, testAsset("keep")); err != nil {
		t.Fatal(err)
	}
	s2, err := New(ctx, db)
	if err != nil {
		t.Fatalf("second New: %v", err)
	}
	assertPresent(t, s2, "keep")
	ms, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Read.QueryRowContext(ctx, `SELECT count(*) FROM klectr_migrations WHERE line = 'asset'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 || n != len(ms) {
		t.Fatalf("klectr_migrations holds %d asset rows, want %d", n, len(ms))
	}
}

// TestNewRefusesNewerSchema: an older binary must not run on a schema a
// newer one migrated.
func TestNewRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, db := newStore(t)
	if _, err := db.Write.ExecContext(ctx,
		`INSERT INTO klectr_migrations (line, version, name, applied_at) VALUES ('asset', 9999, '9999_future.sql', 0)`); err != nil {
		t.Fatal(err)
	}
	if _, err := New(ctx, db); err == nil || !strings.Contains(err.Error(), "9999") {
		t.Fatalf("New on a newer schema = %v, want an error naming version 9999", err)
	}
}

// TestQueryPlans: List and PendingEvents read an index range in order, never
// sort the user's whole history.
func TestQueryPlans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, db := newStore(t)
	cols := `SELECT ` + columns + ` FROM assets `
	for _, tc := range []struct {
		query string
		args  []any
		index string
	}{
		{cols + `WHERE user_id = ? AND (created_at, id) < (?, ?) ORDER BY created_at DESC, id DESC LIMIT ?`,
			[]any{"u", 1, "x", 10}, "assets_user_created"},
		{cols + `WHERE user_id = ? AND status = ? AND (created_at, id) < (?, ?) ORDER BY created_at DESC, id DESC LIMIT ?`,
			[]any{"u", "draft", 1, "x", 10}, "assets_user_status_created"},
		{cols + `WHERE event_pending = 1 ORDER BY processed_at, id LIMIT ?`,
			[]any{10}, "assets_event_pending"},
	} {
		rows, err := db.Read.QueryContext(ctx, `EXPLAIN QUERY PLAN `+tc.query, tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		p := strings.Join(plan, "; ")
		if !strings.Contains(p, tc.index) || strings.Contains(p, "TEMP B-TREE") {
			t.Errorf("plan of %s\n  = %s\nwant a search of %s without a sort", tc.query, p, tc.index)
		}
	}
}

func BenchmarkCreate(b *testing.B) {
	ctx := context.Background()
	s, _ := newStore(b)
	i := 0
	for b.Loop() {
		if err := s.Create(ctx, testAsset(fmt.Sprintf("bench-%09d", i))); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkGet(b *testing.B) {
	ctx := context.Background()
	s, _ := newStore(b)
	const n = 10000
	as := make([]*asset.Asset, n)
	for i := range as {
		as[i] = testAsset(fmt.Sprintf("bench-%09d", i))
	}
	if err := s.Create(ctx, as...); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if _, err := s.Get(ctx, as[i%n].ID); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
