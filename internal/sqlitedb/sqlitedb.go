// Package sqlitedb opens the embedded SQLite database that holds the assets and
// the ai-processing queue in one file, so that an asset and its job commit in
// one transaction.
//
// SQLite allows one writer at a time. The database is therefore opened twice:
// Write is a pool of exactly one connection, through which every write goes
// (transactions start with BEGIN IMMEDIATE, so a writer never has to upgrade a
// read lock and fail with SQLITE_BUSY half-way); Read is a pool of read-only
// connections that, in WAL mode, never wait for the writer.
//
// Every connection keeps the statements it runs prepared (see connector), so
// a statement is parsed once per connection, not once per call.
//
// With one write connection, a goroutine that holds an open transaction must
// not issue a statement on Write outside it: the second statement waits for
// the connection the first one holds, until its context ends.
package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"

	"modernc.org/sqlite"
)

// DB is the pair of pools over one SQLite file.
type DB struct {
	Write *sql.DB // exactly one connection; all writes and write transactions
	Read  *sql.DB // read-only connections for queries that need no write
	Path  string
}

// Open opens (creating if needed) the SQLite file at path in WAL mode.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("sqlitedb: create directory: %w", err)
	}
	write := sql.OpenDB(&connector{dsn: dsn(path, false), drv: &sqlite.Driver{}})
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxIdleTime(0)
	write.SetConnMaxLifetime(0)
	if err := write.PingContext(ctx); err != nil {
		write.Close()
		return nil, fmt.Errorf("sqlitedb: open %s: %w", path, err)
	}

	read := sql.OpenDB(&connector{dsn: dsn(path, true), drv: &sqlite.Driver{}})
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)
	return &DB{Write: write, Read: read, Path: path}, nil
}

// dsn builds the connection string. busy_timeout is not optional: without it
// concurrent writers from River's maintenance goroutines and the upload path
// fail with SQLITE_BUSY instead of waiting their turn.
func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	// FULL: a commit is on disk before the 202 that reports it, even across a
	// power loss, not only across a process crash.
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	}
	return path + "?" + q.Encode()
}

// Close closes both pools.
func (db *DB) Close() error {
	return errors.Join(db.Read.Close(), db.Write.Close())
}

// probeTable holds the one row WriteProbe rewrites.
const probeTable = `CREATE TABLE IF NOT EXISTS klectr_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL) STRICT`

// WriteProbe commits a one-row write through Write, as every writer does
// (the WAL grows, the commit is synced): it fails when the file cannot take
// writes — a full disk, a read-only or failing file system — which a read
// does not notice. It waits its turn for the write connection, so callers
// bound it with ctx.
func (db *DB) WriteProbe(ctx context.Context) error {
	return db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, probeTable); err != nil {
			return fmt.Errorf("sqlitedb: write probe: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO klectr_probe (id, at) VALUES (1, unixepoch('subsec') * 1000)
			ON CONFLICT (id) DO UPDATE SET at = excluded.at`); err != nil {
			return fmt.Errorf("sqlitedb: write probe: %w", err)
		}
		return nil
	})
}
