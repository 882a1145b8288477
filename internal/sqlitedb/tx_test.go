package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
)

// A failed savepoint undoes only its own writes, nested ones included, and
// the transaction commits the rest.
func TestSavepointUndoesOnlyItsOwnWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Write.ExecContext(ctx, "CREATE TABLE t (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	insert := func(tx *sql.Tx, x int) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (?)", x)
		return err
	}
	boom := errors.New("boom")
	err = db.InTx(ctx, func(tx *sql.Tx) error {
		if err := Savepoint(ctx, tx, func() error { return insert(tx, 1) }); err != nil {
			return err
		}
		err := Savepoint(ctx, tx, func() error {
			if err := insert(tx, 2); err != nil {
				return err
			}
			// A nested savepoint that succeeds is still undone with its parent.
			if err := Savepoint(ctx, tx, func() error { return insert(tx, 3) }); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Errorf("failed savepoint returned %v, want boom", err)
		}
		return insert(tx, 4)
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Read.QueryContext(ctx, "SELECT x FROM t ORDER BY x")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []int
	for rows.Next() {
		var x int
		if err := rows.Scan(&x); err != nil {
			t.Fatal(err)
		}
		got = append(got, x)
	}
	if len(got) != 2 || got[0] != 1 || got[1] != 4 {
		t.Fatalf("rows %v, want [1 4]", got)
	}

	// InTx rolls back everything when fn fails.
	err = db.InTx(ctx, func(tx *sql.Tx) error {
		if err := insert(tx, 5); err != nil {
			return err
		}
		return boom
	})
	var n int
	if qerr := db.Read.QueryRowContext(ctx, "SELECT count(*) FROM t WHERE x = 5").Scan(&n); qerr != nil {
		t.Fatal(qerr)
	}
	if !errors.Is(err, boom) || n != 0 {
		t.Fatalf("InTx after a failing fn: err %v, %d rows kept", err, n)
	}
}
