// Package sqlitekeys keeps the idempotency records of the embedded shape in
// the SQLite file of the assets and jobs: sqliteintake writes a record in the
// transaction that creates its assets and jobs (PutTx), so a crash never
// leaves assets without their record or a record without its assets.
//
// The in-flight marker is in memory (Hold): one process owns the file and
// all its uploads, and a crash ends every request in flight with it.
package sqlitekeys

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// Keys is the idempotency_keys table of a sqlitedb.DB and the keys in
// flight in this process.
type Keys struct {
	db *sqlitedb.DB

	mu     sync.Mutex
	flying map[[2]string]string // (user, key) → fingerprint
}

// New migrates the schema (idempotently) and returns the table. The caller
// keeps ownership of db.
func New(ctx context.Context, db *sqlitedb.DB) (*Keys, error) {
	if err := migrate(ctx, db.Write); err != nil {
		return nil, fmt.Errorf("sqlitekeys: migrate %s: %w", db.Path, err)
	}
	return &Keys{db: db, flying: map[[2]string]string{}}, nil
}

// Hold marks the claim's key in flight until release is called. If it is
// in flight already: idempotency.ErrInFlight for the same fingerprint,
// idempotency.ErrReused for another.
func (k *Keys) Hold(c idempotency.Claim) (release func(), err error) {
	id := [2]string{c.UserID, c.Key}
	k.mu.Lock()
	defer k.mu.Unlock()
	if fp, ok := k.flying[id]; ok {
		if fp != c.Fingerprint {
			return nil, idempotency.ErrReused
		}
		return nil, idempotency.ErrInFlight
	}
	k.flying[id] = c.Fingerprint
	return func() {
		k.mu.Lock()
		delete(k.flying, id)
		k.mu.Unlock()
	}, nil
}

// Get returns the record of (userID, key) live at now, or nil.
func (k *Keys) Get(ctx context.Context, userID, key string, now time.Time) (*idempotency.Record, error) {
	r := &idempotency.Record{UserID: userID, Key: key}
	var exp int64
	err := k.db.Read.QueryRowContext(ctx,
		`SELECT fingerprint, response, expires_at FROM idempotency_keys WHERE user_id = ? AND key = ? AND expires_at > ?`,
		userID, key, now.UnixMilli()).Scan(&r.Fingerprint, &r.Response, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitekeys: get: %w", err)
	}
	r.ExpiresAt = time.UnixMilli(exp).UTC()
	return r, nil
}

// PutTx writes the claim's record in tx, replacing an expired one. A live
// record of the key fails it (the caller holds the key, so only a bug gets
// there).
func (k *Keys) PutTx(ctx context.Context, tx *sql.Tx, c idempotency.Claim) error {
	res, err := tx.ExecContext(ctx,
		`INSERT INTO idempotency_keys (user_id, key, fingerprint, response, expires_at) VALUES (?, ?, ?, ?, ?)
		 ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response,
		   expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= ?`,
		c.UserID, c.Key, c.Fingerprint, c.Response, c.ExpiresAt().UnixMilli(), c.At.UnixMilli())
	if err != nil {
		return fmt.Errorf("sqlitekeys: put: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("sqlitekeys: put: %w", err)
	} else if n == 0 {
		return fmt.Errorf("sqlitekeys: put: %w", idempotency.ErrReused)
	}
	return nil
}

// Expire deletes the records that expired before before.
func (k *Keys) Expire(ctx context.Context, before time.Time) (int64, error) {
	res, err := k.db.Write.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE expires_at <= ?`, before.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("sqlitekeys: expire: %w", err)
	}
	return res.RowsAffected()
}
