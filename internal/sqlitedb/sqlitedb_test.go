package sqlitedb

import (
	"context"
	"path/filepath"
	"testing"
)

func TestOpenWALAndReadOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "sub", "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	var mode string
	if err := db.Write.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" {
		t.Fatalf("journal_mode = %q, want wal", mode)
	}
	var busy int
	if err := db.Write.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil {
		t.Fatal(err)
	}
	if busy == 0 {
		t.Fatal("busy_timeout is 0; concurrent writers would fail with SQLITE_BUSY")
	}
	if _, err := db.Write.ExecContext(ctx, "CREATE TABLE t (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Read.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err == nil {
		t.Fatal("insert through the read pool succeeded; want a read-only error")
	}
	tx, err := db.Write.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	// A reader is not blocked by the open write transaction and does not see it.
	var n int
	if err := db.Read.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("reader saw %d uncommitted rows", n)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := db.Read.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("reader saw %d rows after commit, want 1", n)
	}
}

// WriteProbe commits through the write connection, so it fails when SQLite
// refuses writes while reads still work (here the connection is made
// read-only; on a full disk SQLite says "database or disk is full").
func TestWriteProbeFailsWhenWritesFail(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for range 2 {
		if err := db.WriteProbe(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Write.ExecContext(ctx, "PRAGMA query_only = 1"); err != nil {
		t.Fatal(err)
	}
	if err := db.WriteProbe(ctx); err == nil {
		t.Fatal("WriteProbe succeeded on a connection that refuses writes")
	}
	var n int
	if err := db.Read.QueryRowContext(ctx, "SELECT count(*) FROM klectr_probe").Scan(&n); err != nil || n != 1 {
		t.Fatalf("reads still work: %d %v", n, err)
	}
}
