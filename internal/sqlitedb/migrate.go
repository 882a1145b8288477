package sqlitedb

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Migrate applies the migrations of line not yet recorded in the
// klectr_migrations table, all in one write transaction: BEGIN IMMEDIATE
// serialises two processes starting at once, and a failure leaves the schema
// as it was.
//
// files holds the line's migrations at its root, each named NNNN_name.sql;
// NNNN is the version recorded with line, so each package keeps its own
// numbered line in the same file. (River keeps its own table,
// river_migration.) Migrate refuses a database on which line has a version
// newer than the newest in files: running older code on a newer schema could
// corrupt it.
func (db *DB) Migrate(ctx context.Context, line string, files fs.FS) error {
	ms, err := readMigrations(files)
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return fmt.Errorf("no %s migrations", line)
	}
	return db.InTx(ctx, func(tx *sql.Tx) error { return migrate(ctx, tx, line, ms) })
}

type migration struct {
	version int
	name    string
	sql     string
}

// readMigrations reads the files NNNN_name.sql at the root of files in
// version order.
func readMigrations(files fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 || path.Ext(name) != ".sql" {
			return nil, fmt.Errorf("migration file %q is not named NNNN_name.sql", name)
		}
		b, err := fs.ReadFile(files, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %q and %q share version %d", ms[i-1].name, ms[i].name, ms[i].version)
		}
	}
	return ms, nil
}

func migrate(ctx context.Context, tx *sql.Tx, line string, ms []migration) error {
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS klectr_migrations (
		line       TEXT    NOT NULL,
		version    INTEGER NOT NULL,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL,
		PRIMARY KEY (line, version)
	) STRICT`); err != nil {
		return fmt.Errorf("create klectr_migrations: %w", err)
	}

	applied := map[int]bool{}
	rows, err := tx.QueryContext(ctx, `SELECT version FROM klectr_migrations WHERE line = ?`, line)
	if err != nil {
		return fmt.Errorf("read klectr_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("read klectr_migrations: %w", err)
		}
		applied[v] = true
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("read klectr_migrations: %w", err)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read klectr_migrations: %w", err)
	}
	latest := ms[len(ms)-1].version
	for v := range applied {
		if v > latest {
			return fmt.Errorf("the database has %s schema version %d, newer than this binary's %d", line, v, latest)
		}
	}

	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("apply %s: %w", m.name, err)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO klectr_migrations (line, version, name, applied_at)
			 VALUES (?, ?, ?, CAST(unixepoch('subsec') * 1000 AS INTEGER))`,
			line, m.version, m.name); err != nil {
			return fmt.Errorf("record %s: %w", m.name, err)
		}
	}
	return nil
}
