package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// InTx runs fn in a write transaction on db.Write (BEGIN IMMEDIATE) and
// commits it when fn returns nil; otherwise it rolls back and returns fn's
// error. fn must use only tx: see the package doc.
func (db *DB) InTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.Write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlitedb: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlitedb: commit: %w", err)
	}
	return nil
}

// Savepoint runs fn inside a savepoint of tx. When fn fails, only fn's
// writes are undone and tx stays usable for the caller's other work.
// Savepoints nest: fn may call Savepoint again.
func Savepoint(ctx context.Context, tx *sql.Tx, fn func() error) error {
	if _, err := tx.ExecContext(ctx, "SAVEPOINT klectr"); err != nil {
		return fmt.Errorf("sqlitedb: savepoint: %w", err)
	}
	if err := fn(); err != nil {
		// Undo even if ctx is done, so that tx holds none of fn's writes
		// whatever the caller does next.
		uctx := context.WithoutCancel(ctx)
		if _, rerr := tx.ExecContext(uctx, "ROLLBACK TO klectr; RELEASE klectr"); rerr != nil {
			return errors.Join(err, fmt.Errorf("sqlitedb: undo savepoint: %w", rerr))
		}
		return err
	}
	if _, err := tx.ExecContext(ctx, "RELEASE klectr"); err != nil {
		return fmt.Errorf("sqlitedb: release savepoint: %w", err)
	}
	return nil
}
