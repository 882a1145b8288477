package sqlitelog_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/eventlogtest"
	"github.com/klectr/klectr/internal/eventlog/sqlitelog"
	"github.com/klectr/klectr/internal/sqlitedb"
)

func newLog(t *testing.T) *sqlitelog.Log {
	t.Helper()
	db, err := sqlitedb.Open(context.Background(), filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := sqlitelog.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLog(t *testing.T) {
	t.Parallel()
	eventlogtest.TestLog(t, func(t *testing.T) eventlog.Log { return newLog(t) })
}

// The log shares the file with the asset store: each keeps its own
// migration line, in either order, and a restart migrates nothing again.
func TestSharesTheFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "klectr.db")
	for range 2 {
		db, err := sqlitedb.Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sqlitestore.New(ctx, db); err != nil {
			t.Fatalf("asset store: %v", err)
		}
		l, err := sqlitelog.New(ctx, db)
		if err != nil {
			t.Fatalf("event log: %v", err)
		}
		if err := l.Append(ctx, "u1", "e1", []byte(`{"eventId":"e1"}`), time.Now()); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
}

// Appends are committed in groups; a row the database refuses fails its
// own Append only, never the others committed with it.
func TestRefusedRowFailsOnlyItsAppend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := sqlitelog.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Write.ExecContext(ctx, `CREATE TRIGGER refuse BEFORE INSERT ON event_log
		WHEN NEW.event_id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END`); err != nil {
		t.Fatal(err)
	}
	const n = 64
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		id := fmt.Sprint("e", i)
		if i == n/2 {
			id = "bad"
		}
		wg.Go(func() {
			errs[i] = l.Append(ctx, "u1", id, []byte(fmt.Sprintf(`{"eventId":%q}`, id)), time.Now())
		})
	}
	wg.Wait()
	for i, err := range errs {
		if (err != nil) != (i == n/2) {
			t.Errorf("append %d: %v", i, err)
		}
	}
	got, err := l.After(ctx, "u1", "", eventlog.MaxLimit)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n-1 {
		t.Errorf("%d events in the log, want %d", len(got), n-1)
	}
}
