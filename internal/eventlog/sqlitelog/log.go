// Package sqlitelog is the eventlog.Log of the embedded mode: a table in the
// SQLite file opened by sqlitedb, with its own migration line. Appends go
// through the one write connection, so a user's order is the order of the
// commits; reads use the read-only pool.
package sqlitelog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// Log keeps events in the "event_log" table of a sqlitedb.DB.
type Log struct {
	db *sqlitedb.DB
	// Group, when set, runs Append's insert in a group commit shared with
	// other writers of the same file (sqlitestore.Store.Group): a worker
	// appends one event per job, and a commit of its own each time is an
	// fsync on the one write connection. Nil: each Append commits alone.
	Group func(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error
}

var _ eventlog.Log = (*Log)(nil)

// New migrates the schema (idempotently, in one transaction) and returns the
// log. The caller keeps ownership of db and closes it.
func New(ctx context.Context, db *sqlitedb.DB) (*Log, error) {
	if err := db.Migrate(ctx, migrationLine, migrations); err != nil {
		return nil, fmt.Errorf("sqlitelog: migrate %s: %w", db.Path, err)
	}
	return &Log{db: db}, nil
}

// Append adds the event unless userID's log holds eventID already.
func (l *Log) Append(ctx context.Context, userID, eventID string, data json.RawMessage, at time.Time) error {
	if err := eventlog.Validate(userID, eventID, data); err != nil {
		return err
	}
	var err error
	if l.Group != nil {
		err = l.Group(ctx, func(ctx context.Context, tx *sql.Tx) error { return insert(ctx, tx, userID, eventID, data, at) })
	} else {
		err = insert(ctx, l.db.Write, userID, eventID, data, at)
	}
	if err != nil {
		return fmt.Errorf("sqlitelog: append: %w", err)
	}
	return nil
}

// AppendTx is Append inside the caller's write transaction on the same
// file, so that the event commits with the change it reports (see
// sqlitestore.Store.LogEvents). It uses only tx.
func (l *Log) AppendTx(ctx context.Context, tx *sql.Tx, userID, eventID string, data json.RawMessage, at time.Time) error {
	if err := eventlog.Validate(userID, eventID, data); err != nil {
		return err
	}
	if err := insert(ctx, tx, userID, eventID, data, at); err != nil {
		return fmt.Errorf("sqlitelog: append: %w", err)
	}
	return nil
}

// execer is what *sql.DB and *sql.Tx share for insert.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func insert(ctx context.Context, db execer, userID, eventID string, data json.RawMessage, at time.Time) error {
	_, err := db.ExecContext(ctx, `INSERT INTO event_log (user_id, event_id, data, at) VALUES (?, ?, ?, ?)
		ON CONFLICT (user_id, event_id) DO NOTHING`, userID, eventID, string(data), at.UnixMilli())
	return err
}

// After returns userID's events after afterEventID, oldest first.
func (l *Log) After(ctx context.Context, userID, afterEventID string, limit int) ([]eventlog.Event, error) {
	var seq int64
	if afterEventID != "" {
		err := l.db.Read.QueryRowContext(ctx,
			`SELECT seq FROM event_log WHERE user_id = ? AND event_id = ?`, userID, afterEventID).Scan(&seq)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, eventlog.ErrUnknownEvent
		}
		if err != nil {
			return nil, fmt.Errorf("sqlitelog: find %s: %w", afterEventID, err)
		}
	}
	rows, err := l.db.Read.QueryContext(ctx,
		`SELECT event_id, data, at FROM event_log WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
		userID, seq, eventlog.ClampLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlitelog: read: %w", err)
	}
	defer rows.Close()
	var out []eventlog.Event
	for rows.Next() {
		var (
			e    eventlog.Event
			data string
			at   int64
		)
		if err := rows.Scan(&e.ID, &data, &at); err != nil {
			return nil, fmt.Errorf("sqlitelog: read: %w", err)
		}
		e.Data, e.At = json.RawMessage(data), time.UnixMilli(at).UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitelog: read: %w", err)
	}
	return out, nil
}

// Last returns the id of userID's newest event, or "".
func (l *Log) Last(ctx context.Context, userID string) (string, error) {
	var id string
	err := l.db.Read.QueryRowContext(ctx,
		`SELECT event_id FROM event_log WHERE user_id = ? ORDER BY seq DESC LIMIT 1`, userID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("sqlitelog: last: %w", err)
	}
	return id, nil
}

// Expire deletes the events appended with a time before before.
func (l *Log) Expire(ctx context.Context, before time.Time) (int64, error) {
	res, err := l.db.Write.ExecContext(ctx, `DELETE FROM event_log WHERE at < ?`, before.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("sqlitelog: expire: %w", err)
	}
	return res.RowsAffected()
}
