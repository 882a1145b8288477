package sqlitelog_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/eventlogtest"
	"github.com/klectr/klectr/internal/eventlog/sqlitelog"
	"github.com/klectr/klectr/internal/sqlitedb"
)

func newLog(t *testing.T) *sqlitelog.Log {
	l, _ := openLog(t)
	return l
}

// openLog returns a log on a new file, and the file.
func openLog(t *testing.T) (*sqlitelog.Log, *sqlitedb.DB) {
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
	return l, db
}

func TestLog(t *testing.T) {
	t.Parallel()
	eventlogtest.TestLog(t, func(t *testing.T) eventlog.Log { return newLog(t) })
}

// TestLogInStoreGroups: the suite again with appends committed in the
// asset store's group commits, as klectr serve wires the log.
func TestLogInStoreGroups(t *testing.T) {
	t.Parallel()
	eventlogtest.TestLog(t, func(t *testing.T) eventlog.Log {
		db, err := sqlitedb.Open(context.Background(), filepath.Join(t.TempDir(), "klectr.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		st, err := sqlitestore.New(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		l, err := sqlitelog.New(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		l.Group = st.Group
		return l
	})
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

// AppendTx's event is the caller's transaction's: gone with a rollback,
// there after the commit, and refused before any write when invalid.
func TestAppendTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, db := openLog(t)
	appendIn := func(commit bool, id string) error {
		tx, err := db.Write.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = l.AppendTx(ctx, tx, "u1", id, []byte(`{"eventId":"`+id+`"}`), time.Now())
		if commit && err == nil {
			return tx.Commit()
		}
		tx.Rollback()
		return err
	}
	if err := appendIn(false, "rolled-back"); err != nil {
		t.Fatal(err)
	}
	if err := appendIn(true, "committed"); err != nil {
		t.Fatal(err)
	}
	evs, err := l.After(ctx, "u1", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].ID != "committed" {
		t.Errorf("log after a rolled-back and a committed AppendTx: %+v, want only the committed one", evs)
	}
	tx, err := db.Write.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if err := l.AppendTx(ctx, tx, "u1", "bad", []byte(`{not json`), time.Now()); !errors.Is(err, eventlog.ErrInvalid) {
		t.Errorf("AppendTx of data that is not JSON = %v, want eventlog.ErrInvalid", err)
	}
	if err := l.AppendTx(ctx, tx, "", "bad", []byte(`{}`), time.Now()); !errors.Is(err, eventlog.ErrInvalid) {
		t.Errorf("AppendTx without a user = %v, want eventlog.ErrInvalid", err)
	}
}
