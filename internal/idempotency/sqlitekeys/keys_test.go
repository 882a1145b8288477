package sqlitekeys_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/klectr/klectr/internal/idempotency/sqlitekeys"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// TestNewMigratesOnce: every start runs New on the same file; the table is
// created once and recorded under the idempotency line.
func TestNewMigratesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for range 2 {
		if _, err := sqlitekeys.New(ctx, db); err != nil {
			t.Fatalf("New: %v", err)
		}
	}
	var n int
	if err := db.Read.QueryRowContext(ctx, `SELECT count(*) FROM idempotency_keys`).Scan(&n); err != nil {
		t.Fatalf("idempotency_keys: %v", err)
	}
	if err := db.Read.QueryRowContext(ctx,
		`SELECT count(*) FROM klectr_migrations WHERE line = 'idempotency' AND version = 1`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("klectr_migrations holds %d idempotency version-1 rows, want 1", n)
	}
}
