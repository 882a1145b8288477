// Package sqlitestore is the asset.Store of the embedded mode: a table in the
// SQLite file that also holds River's queue, so that an asset and its job
// commit in one transaction (CreateTx, ReprocessTx).
//
// Writes go through sqlitedb.DB.Write (one connection, BEGIN IMMEDIATE);
// the worker's writes (RecordAttempt, Finish, EventSent) of concurrent
// callers share one transaction and its fsync. Reads (Get, List,
// PendingEvents, Ping) go through the read-only pool, which in WAL mode never
// waits for the writer.
package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// Store keeps assets in the "assets" table of a sqlitedb.DB.
type Store struct {
	db       *sqlitedb.DB
	w        *groupWriter // RecordAttempt, Finish, EventSent
	logEvent func(ctx context.Context, tx *sql.Tx, a *asset.Asset) error
}

var _ asset.Store = (*Store)(nil)

// New migrates the schema (idempotently, in one transaction) and returns the
// store. The caller keeps ownership of db and closes it.
func New(ctx context.Context, db *sqlitedb.DB) (*Store, error) {
	if err := db.Migrate(ctx, migrationLine, migrations); err != nil {
		return nil, fmt.Errorf("sqlitestore: migrate %s: %w", db.Path, err)
	}
	return &Store{db: db, w: &groupWriter{db: db.Write}}, nil
}

// querier is what *sql.DB and *sql.Tx share, so each operation is written
// once and runs either on its own or inside the caller's transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

const columns = `id, user_id, status, processing_job_id, filename, content_type,
	size, sha256, width, height, blob_key, ai_metadata, error_code, error_message,
	attempts, created_at, updated_at, processed_at, event_id, event_pending,
	received_at, enqueued_at, started_at, analyzed_at, event_sent_at`

// Create inserts all assets in one transaction, or none.
func (s *Store) Create(ctx context.Context, assets ...*asset.Asset) error {
	if len(assets) == 0 {
		return nil
	}
	return s.db.InTx(ctx, func(tx *sql.Tx) error { return s.CreateTx(ctx, tx, assets...) })
}

// CreateTx inserts assets inside the caller's write transaction on the same
// sqlitedb.DB (begun on its Write pool), so that they commit or roll back
// with whatever else tx holds, such as their queue jobs. It inserts all or
// none: on error, tx is as it was before the call and still usable.
// It uses only tx: a statement on Write while tx is open would deadlock.
func (s *Store) CreateTx(ctx context.Context, tx *sql.Tx, assets ...*asset.Asset) error {
	if len(assets) == 0 {
		return nil
	}
	return sqlitedb.Savepoint(ctx, tx, func() error {
		for _, a := range assets {
			if err := insert(ctx, tx, a); err != nil {
				return err
			}
		}
		return nil
	})
}

func insert(ctx context.Context, q querier, a *asset.Asset) error {
	var errCode, errMsg *string
	if a.Error != nil {
		errCode, errMsg = &a.Error.Code, &a.Error.Message
	}
	_, err := q.ExecContext(ctx, `INSERT INTO assets (`+columns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.ID, a.UserID, string(a.Status), a.ProcessingJobID, a.Filename, a.ContentType,
		a.Size, a.SHA256, a.Width, a.Height, a.BlobKey, jsonText(a.AIMetadata), errCode, errMsg,
		a.Attempts, a.CreatedAt.UnixMilli(), a.UpdatedAt.UnixMilli(), millis(a.ProcessedAt), a.EventID, a.EventPending,
		millis(a.ReceivedAt), millis(a.EnqueuedAt), millis(a.StartedAt), millis(a.AnalyzedAt), millis(a.EventSentAt))
	if isUniqueViolation(err) {
		return fmt.Errorf("sqlitestore: create %s: %w", a.ID, asset.ErrDuplicate)
	}
	if err != nil {
		return fmt.Errorf("sqlitestore: create %s: %w", a.ID, err)
	}
	return nil
}

// Get returns the asset with that id, or asset.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*asset.Asset, error) {
	a, err := scanAsset(s.db.Read.QueryRowContext(ctx, `SELECT `+columns+` FROM assets WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlitestore: get %s: %w", id, asset.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: get %s: %w", id, err)
	}
	return a, nil
}

// GetTx is Get inside the caller's write transaction: it sees what tx has
// written, and it uses only tx.
func (s *Store) GetTx(ctx context.Context, tx *sql.Tx, id string) (*asset.Asset, error) {
	a, err := scanAsset(tx.QueryRowContext(ctx, `SELECT `+columns+` FROM assets WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlitestore: get %s: %w", id, asset.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: get %s: %w", id, err)
	}
	return a, nil
}

// Page size bounds; a Limit outside them is clamped (see assettest).
const (
	minLimit = 1
	maxLimit = 100
)

// List returns a page of userID's assets, newest first. The cursor is the
// last asset's (created_at, id): a keyset, so assets added or removed
// between pages neither repeat nor skip the others.
func (s *Store) List(ctx context.Context, userID string, q asset.ListQuery) (asset.Page, error) {
	limit := min(max(q.Limit, minLimit), maxLimit)
	var sb strings.Builder
	sb.WriteString(`SELECT ` + columns + ` FROM assets WHERE user_id = ?`)
	args := []any{userID}
	if q.Status != "" {
		if !q.Status.Valid() {
			return asset.Page{}, fmt.Errorf("sqlitestore: list: unknown status %q", q.Status)
		}
		sb.WriteString(` AND status = ?`)
		args = append(args, string(q.Status))
	}
	if q.After != "" {
		ms, id, err := asset.DecodeCursor(q.After)
		if err != nil {
			return asset.Page{}, fmt.Errorf("sqlitestore: list: %w", err)
		}
		sb.WriteString(` AND (created_at, id) < (?, ?)`)
		args = append(args, ms, id)
	}
	// One row more than the page tells whether there is a next page.
	sb.WriteString(` ORDER BY created_at DESC, id DESC LIMIT ?`)
	args = append(args, limit+1)

	as, err := queryAssets(ctx, s.db.Read, sb.String(), args...)
	if err != nil {
		return asset.Page{}, fmt.Errorf("sqlitestore: list: %w", err)
	}
	page := asset.Page{Assets: as}
	if len(as) > limit {
		page.Assets = as[:limit]
		last := as[limit-1]
		page.Next = asset.EncodeCursor(last.CreatedAt.UnixMilli(), last.ID)
	}
	return page, nil
}

// RecordAttempt sets Attempts (and UpdatedAt, and StartedAt unless set)
// while the asset is processing under jobID: asset.ErrConflict if it is not,
// asset.ErrNotFound if it is gone. It commits together with concurrent
// callers' writes (see groupWriter).
func (s *Store) RecordAttempt(ctx context.Context, id, jobID string, attempt int, now time.Time) error {
	err := s.w.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		ms := now.UnixMilli()
		res, err := tx.ExecContext(ctx, `UPDATE assets SET attempts = ?, updated_at = ?,
				started_at = coalesce(started_at, ?)
			WHERE id = ? AND status = 'processing' AND processing_job_id = ?`,
			attempt, ms, ms, id, jobID)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return noRow(ctx, tx, id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlitestore: record attempt %s: %w", id, err)
	}
	return nil
}

// Finish applies out in one statement, guarded by status and job, so of
// many concurrent calls exactly one matches. It returns asset.ErrConflict
// when the asset is not processing under jobID, asset.ErrNotFound when it is
// gone, and rejects an outcome that is not final or has no event id. It
// commits together with concurrent callers' writes (see groupWriter).
func (s *Store) Finish(ctx context.Context, id, jobID string, out asset.Outcome) (*asset.Asset, error) {
	if err := checkOutcome(id, out); err != nil {
		return nil, err
	}
	var a *asset.Asset
	err := s.w.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if s.logEvent == nil {
			var err error
			a, err = finishRow(ctx, tx, id, jobID, out, nil)
			if errors.Is(err, sql.ErrNoRows) {
				return noRow(ctx, tx, id)
			}
			return err
		}
		// In a savepoint, so that an event the log refuses undoes this
		// update alone and leaves the other writes of the group be.
		var logErr error
		err := sqlitedb.Savepoint(ctx, tx, func() error {
			sent := time.Now()
			var err error
			if a, err = finishRow(ctx, tx, id, jobID, out, &sent); err != nil {
				return err
			}
			logErr = s.logEvent(ctx, tx, a)
			return logErr
		})
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return noRow(ctx, tx, id)
		case err != nil && err == logErr: // not joined with a failed undo
			return domainError{fmt.Errorf("log its event: %w", err)}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: finish %s: %w", id, err)
	}
	return a, nil
}

// LogEvents makes Finish append the event of the final state it records
// through logEvent, inside Finish's own transaction (the event log being a
// table of the same file), and record that event as sent there: the log is
// then the outbox. A device that misses the live event, even across a
// crash between the commit and the publish, gets it from the log when it
// reconnects, so the event is not left owed for a relay, and the asset
// Finish returns has EventPending false (EventSentAt is the time of the
// append). If logEvent fails, Finish fails and changes nothing. FinishTx
// (an operator's deletion of a job) still leaves its event owed: nothing
// publishes it but the relay. Call LogEvents before any write.
func (s *Store) LogEvents(logEvent func(ctx context.Context, tx *sql.Tx, a *asset.Asset) error) {
	s.logEvent = logEvent
}

// FinishTx is Finish inside the caller's write transaction, so that an
// operator's deletion of a job fails its asset in the same commit. It uses
// only tx.
func (s *Store) FinishTx(ctx context.Context, tx *sql.Tx, id, jobID string, out asset.Outcome) (*asset.Asset, error) {
	if err := checkOutcome(id, out); err != nil {
		return nil, err
	}
	a, err := finishRow(ctx, tx, id, jobID, out, nil)
	if errors.Is(err, sql.ErrNoRows) {
		err = missingOrConflict(ctx, tx, id)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: finish %s: %w", id, err)
	}
	return a, nil
}

func checkOutcome(id string, out asset.Outcome) error {
	if out.Status != asset.StatusDraft && out.Status != asset.StatusFailed {
		return fmt.Errorf("sqlitestore: finish %s: outcome status %q is not final", id, out.Status)
	}
	if out.EventID == "" {
		return fmt.Errorf("sqlitestore: finish %s: outcome has no event id", id)
	}
	return nil
}

// finishRow is Finish's guarded update; sql.ErrNoRows when the guard fails.
// The event is owed, unless sent is set: then it is recorded as sent then.
func finishRow(ctx context.Context, tx *sql.Tx, id, jobID string, out asset.Outcome, sent *time.Time) (*asset.Asset, error) {
	var errCode, errMsg *string
	if out.Error != nil {
		errCode, errMsg = &out.Error.Code, &out.Error.Message
	}
	ms := out.ProcessedAt.UnixMilli()
	return scanAsset(tx.QueryRowContext(ctx, `UPDATE assets SET
			status = ?, ai_metadata = ?, error_code = ?, error_message = ?, attempts = ?,
			processed_at = ?, updated_at = ?, event_id = ?, event_pending = ?,
			analyzed_at = ?, event_sent_at = ?
		WHERE id = ? AND status = 'processing' AND processing_job_id = ?
		RETURNING `+columns,
		string(out.Status), jsonText(out.AIMetadata), errCode, errMsg, out.Attempts,
		ms, ms, out.EventID, sent == nil, millis(out.AnalyzedAt), millis(sent), id, jobID))
}

// noRow explains, as a domainError, why a guarded update in a group
// matched no row.
func noRow(ctx context.Context, tx *sql.Tx, id string) error {
	err := missingOrConflict(ctx, tx, id)
	if errors.Is(err, asset.ErrNotFound) || errors.Is(err, asset.ErrConflict) {
		return domainError{err}
	}
	return err
}

// Reprocess moves a failed asset to processing under newJobID.
func (s *Store) Reprocess(ctx context.Context, id, newJobID string, now time.Time) (*asset.Asset, error) {
	var a *asset.Asset
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		var err error
		a, err = s.ReprocessTx(ctx, tx, id, newJobID, now)
		return err
	})
	return a, err
}

// ReprocessTx moves a failed asset to processing under newJobID inside the
// caller's write transaction, so the asset and its new job commit together.
// It clears the previous outcome (metadata, error, attempts, processedAt) and
// its event: a failure whose event is still owed is superseded by the next
// final state's event. asset.ErrConflict if the asset is not failed,
// asset.ErrNotFound if there is none. It uses only tx.
func (s *Store) ReprocessTx(ctx context.Context, tx *sql.Tx, id, newJobID string, now time.Time) (*asset.Asset, error) {
	if newJobID == "" {
		return nil, fmt.Errorf("sqlitestore: reprocess %s: empty job id", id)
	}
	ms := now.UnixMilli()
	a, err := scanAsset(tx.QueryRowContext(ctx, `UPDATE assets SET
			status = 'processing', processing_job_id = ?, ai_metadata = NULL,
			error_code = NULL, error_message = NULL, attempts = 0, processed_at = NULL,
			updated_at = ?, event_id = '', event_pending = 0,
			received_at = ?, enqueued_at = ?, started_at = NULL, analyzed_at = NULL, event_sent_at = NULL
		WHERE id = ? AND status = 'failed'
		RETURNING `+columns,
		newJobID, ms, ms, ms, id))
	if errors.Is(err, sql.ErrNoRows) {
		err = missingOrConflict(ctx, tx, id)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: reprocess %s: %w", id, err)
	}
	return a, nil
}

// PendingEvents returns up to limit assets whose event is owed, oldest
// final state first.
func (s *Store) PendingEvents(ctx context.Context, limit int) ([]*asset.Asset, error) {
	if limit < 1 {
		return nil, fmt.Errorf("sqlitestore: pending events: limit %d is not positive", limit)
	}
	as, err := queryAssets(ctx, s.db.Read, `SELECT `+columns+` FROM assets
		WHERE event_pending = 1 ORDER BY processed_at, id LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: pending events: %w", err)
	}
	return as, nil
}

// EventSent clears the owed mark, recording sentAt, if eventID is still the
// owed event; a stale id (the asset was reprocessed and finished again), a
// repeat or a deleted asset is not an error. It commits together with
// concurrent callers' writes (see groupWriter).
func (s *Store) EventSent(ctx context.Context, id, eventID string, sentAt time.Time) error {
	err := s.w.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE assets SET event_pending = 0, event_sent_at = ?
			WHERE id = ? AND event_id = ? AND event_pending = 1`, sentAt.UnixMilli(), id, eventID)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlitestore: event sent %s: %w", id, err)
	}
	return nil
}

// Delete removes the assets with those ids in one statement; missing ids
// are ignored.
func (s *Store) Delete(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	list, err := json.Marshal(ids)
	if err != nil {
		return fmt.Errorf("sqlitestore: delete: %w", err)
	}
	if _, err := s.db.Write.ExecContext(ctx,
		`DELETE FROM assets WHERE id IN (SELECT value FROM json_each(?))`, string(list)); err != nil {
		return fmt.Errorf("sqlitestore: delete: %w", err)
	}
	return nil
}

// Ping checks that the file is readable and holds the assets table. It does
// not take the write connection, so a readiness probe never queues behind
// writes.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	if err := s.db.Read.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT 1 FROM assets LIMIT 1)`).Scan(&n); err != nil {
		return fmt.Errorf("sqlitestore: ping: %w", err)
	}
	return nil
}

// missingOrConflict explains why a guarded update matched no row.
func missingOrConflict(ctx context.Context, q querier, id string) error {
	var one int
	err := q.QueryRowContext(ctx, `SELECT 1 FROM assets WHERE id = ?`, id).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return asset.ErrNotFound
	case err != nil:
		return err
	}
	return asset.ErrConflict
}

func isUniqueViolation(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	return se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
}

// jsonText binds metadata as TEXT (a STRICT column refuses a BLOB); empty
// means none.
func jsonText(m json.RawMessage) *string {
	if len(m) == 0 {
		return nil
	}
	s := string(m)
	return &s
}

type scanner interface{ Scan(dest ...any) error }

func scanAsset(sc scanner) (*asset.Asset, error) {
	var (
		a                asset.Asset
		status           string
		aiMetadata       sql.NullString
		errCode, errMsg  sql.NullString
		created, updated int64
		eventPending     int64
		tl               [6]sql.NullInt64 // processed, received, enqueued, started, analyzed, event sent
	)
	if err := sc.Scan(&a.ID, &a.UserID, &status, &a.ProcessingJobID, &a.Filename, &a.ContentType,
		&a.Size, &a.SHA256, &a.Width, &a.Height, &a.BlobKey, &aiMetadata, &errCode, &errMsg,
		&a.Attempts, &created, &updated, &tl[0], &a.EventID, &eventPending,
		&tl[1], &tl[2], &tl[3], &tl[4], &tl[5]); err != nil {
		return nil, err
	}
	a.Status = asset.Status(status)
	if aiMetadata.Valid {
		a.AIMetadata = json.RawMessage(aiMetadata.String)
	}
	if errCode.Valid {
		a.Error = &asset.Error{Code: errCode.String, Message: errMsg.String}
	}
	a.CreatedAt = fromMillis(created)
	a.UpdatedAt = fromMillis(updated)
	a.ProcessedAt, a.ReceivedAt, a.EnqueuedAt = timeOf(tl[0]), timeOf(tl[1]), timeOf(tl[2])
	a.StartedAt, a.AnalyzedAt, a.EventSentAt = timeOf(tl[3]), timeOf(tl[4]), timeOf(tl[5])
	a.EventPending = eventPending != 0
	return &a, nil
}

func queryAssets(ctx context.Context, q querier, query string, args ...any) ([]*asset.Asset, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	as := []*asset.Asset{}
	for rows.Next() {
		a, err := scanAsset(rows)
		if err != nil {
			return nil, err
		}
		as = append(as, a)
	}
	return as, rows.Err()
}

func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func timeOf(ms sql.NullInt64) *time.Time {
	if !ms.Valid {
		return nil
	}
	t := fromMillis(ms.Int64)
	return &t
}

// millis binds an optional time (nil: NULL).
func millis(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	ms := t.UnixMilli()
	return &ms
}

// Timelines returns the timelines of up to limit assets received at or
// after since, newest first (index assets_received).
func (s *Store) Timelines(ctx context.Context, since time.Time, limit int) ([]asset.Timeline, error) {
	if limit < 1 {
		return nil, fmt.Errorf("sqlitestore: timelines: limit %d is not positive", limit)
	}
	rows, err := s.db.Read.QueryContext(ctx, `SELECT received_at, enqueued_at, started_at,
			analyzed_at, processed_at, event_sent_at
		FROM assets WHERE received_at IS NOT NULL AND received_at >= ?
		ORDER BY received_at DESC LIMIT ?`, since.UnixMilli(), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: timelines: %w", err)
	}
	defer rows.Close()
	out := []asset.Timeline{}
	for rows.Next() {
		var v [6]sql.NullInt64
		if err := rows.Scan(&v[0], &v[1], &v[2], &v[3], &v[4], &v[5]); err != nil {
			return nil, fmt.Errorf("sqlitestore: timelines: %w", err)
		}
		out = append(out, asset.Timeline{ReceivedAt: timeOf(v[0]), EnqueuedAt: timeOf(v[1]), StartedAt: timeOf(v[2]),
			AnalyzedAt: timeOf(v[3]), ProcessedAt: timeOf(v[4]), EventSentAt: timeOf(v[5])})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: timelines: %w", err)
	}
	return out, nil
}

// Processing returns up to limit processing assets last updated before
// updatedBefore with an id after afterID, in id order.
func (s *Store) Processing(ctx context.Context, updatedBefore time.Time, afterID string, limit int) ([]*asset.Asset, error) {
	if limit < 1 {
		return nil, fmt.Errorf("sqlitestore: processing: limit %d is not positive", limit)
	}
	as, err := queryAssets(ctx, s.db.Read, `SELECT `+columns+` FROM assets
		WHERE status = 'processing' AND id > ? AND updated_at < ? ORDER BY id LIMIT ?`,
		afterID, updatedBefore.UnixMilli(), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: processing: %w", err)
	}
	return as, nil
}

// BlobsInUse reports which of keys an asset references.
func (s *Store) BlobsInUse(ctx context.Context, keys []string) (map[string]bool, error) {
	used := make(map[string]bool)
	if len(keys) == 0 {
		return used, nil
	}
	list, err := json.Marshal(keys)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: blobs in use: %w", err)
	}
	rows, err := s.db.Read.QueryContext(ctx, `SELECT DISTINCT blob_key FROM assets
		WHERE blob_key IN (SELECT value FROM json_each(?))`, string(list))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: blobs in use: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, fmt.Errorf("sqlitestore: blobs in use: %w", err)
		}
		used[k] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: blobs in use: %w", err)
	}
	return used, nil
}
