// Package sqlitelog is the eventlog.Log of the embedded mode: a table in the
// SQLite file opened by sqlitedb, with its own migration line. Appends go
// through the one write connection, so a user's order is the order of the
// commits; reads use the read-only pool.
//
// Appends are committed in groups: every append that arrives while a
// commit is in progress waits for it and then goes, with all the others
// that arrived meanwhile, into the next transaction. A commit is an fsync
// (synchronous=FULL) on the write connection the intake and the queue also
// need; one per event capped the events at one per fsync and made each wait
// behind all the others (issue 9, target 4). Each Append still returns only
// after its own row is committed, so an event is durable before it is sent.
package sqlitelog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// Log keeps events in the "event_log" table of a sqlitedb.DB.
type Log struct {
	db *sqlitedb.DB

	mu sync.Mutex
	// waiting holds the appends for the next group; committing is true
	// while a goroutine (commitAll) commits groups, and it takes waiting
	// when its commit is done. No goroutine runs while nothing waits.
	waiting    []*pendingAppend
	committing bool
}

// pendingAppend is one Append waiting for its group's commit.
type pendingAppend struct {
	userID, eventID, data string
	at                    int64
	done                  chan error // buffered: the committer never waits
}

// Group commit bounds.
const (
	// maxGroup bounds the rows of one transaction; more waiting go into
	// the next one.
	maxGroup = 512
	// commitTimeout bounds one group's transaction. It does not come from
	// an Append's context: the group serves many callers, and one of them
	// giving up must not fail the others.
	commitTimeout = 30 * time.Second
)

var _ eventlog.Log = (*Log)(nil)

// New migrates the schema (idempotently, in one transaction) and returns the
// log. The caller keeps ownership of db and closes it.
func New(ctx context.Context, db *sqlitedb.DB) (*Log, error) {
	if err := db.Migrate(ctx, migrationLine, migrations); err != nil {
		return nil, fmt.Errorf("sqlitelog: migrate %s: %w", db.Path, err)
	}
	return &Log{db: db}, nil
}

const insertEvent = `INSERT INTO event_log (user_id, event_id, data, at) VALUES (?, ?, ?, ?)
	ON CONFLICT (user_id, event_id) DO NOTHING`

// Append adds the event unless userID's log holds eventID already. It
// returns once the event's group has committed. When ctx ends first it
// returns ctx's error, and the event may still be committed: the caller
// then treats it as not sent and appends it again later, which is a no-op.
func (l *Log) Append(ctx context.Context, userID, eventID string, data json.RawMessage, at time.Time) error {
	if err := eventlog.Validate(userID, eventID, data); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sqlitelog: append: %w", err)
	}
	p := &pendingAppend{userID: userID, eventID: eventID, data: string(data), at: at.UnixMilli(), done: make(chan error, 1)}
	l.mu.Lock()
	l.waiting = append(l.waiting, p)
	if !l.committing {
		// The committer is a goroutine of its own, not this caller, so
		// that every caller, the first too, can give up when its ctx ends.
		l.committing = true
		go l.commitAll()
	}
	l.mu.Unlock()
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("sqlitelog: append: %w", ctx.Err())
	}
}

// commitAll commits groups until none is waiting.
func (l *Log) commitAll() {
	for l.commitGroup() {
	}
}

// commitGroup commits up to maxGroup waiting appends in one transaction and
// tells each its outcome. It reports whether more are waiting; when none
// is, committing is over (the next Append starts a committer).
func (l *Log) commitGroup() (more bool) {
	l.mu.Lock()
	n := min(len(l.waiting), maxGroup)
	group := l.waiting[:n:n]
	l.waiting = l.waiting[n:]
	if len(l.waiting) == 0 {
		l.waiting = nil // let the array go
	}
	l.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	err := l.insert(ctx, group)
	if err != nil && len(group) > 1 {
		// One row the database refuses must not fail the others: each
		// goes again alone, and gets its own outcome.
		for _, p := range group {
			p.done <- l.insert(ctx, []*pendingAppend{p})
		}
	} else {
		for _, p := range group {
			p.done <- err
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.waiting) == 0 {
		l.committing = false
		return false
	}
	return true
}

// insert commits group in one transaction, in order.
func (l *Log) insert(ctx context.Context, group []*pendingAppend) error {
	err := l.db.InTx(ctx, func(tx *sql.Tx) error {
		for _, p := range group {
			if _, err := tx.ExecContext(ctx, insertEvent, p.userID, p.eventID, p.data, p.at); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlitelog: append: %w", err)
	}
	return nil
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
