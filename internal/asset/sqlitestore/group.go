package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// groupWriter commits the small writes of concurrent callers (a worker's
// RecordAttempt, Finish and EventSent) in one transaction: each of them
// alone is a commit, an fsync under synchronous=FULL, on the one write
// connection that uploads and River also wait for.
//
// The first caller to arrive while no group runs leads: it takes every
// write waiting at that moment, runs them in one transaction and commits
// it, then hands the lead to the first write that arrived meanwhile, so no
// caller leads more than one group. There is no goroutine to start or stop.
type groupWriter struct {
	db *sql.DB

	mu      sync.Mutex
	waiting []*groupWrite
	leading bool // a caller is running a group
	groups  int  // groups committed (tests read it)
}

// Group runs fn in the transaction of the next group of worker writes
// (RecordAttempt, Finish, EventSent) and returns once it has committed, so
// that another table's small write on the same sqlitedb.DB, such as the
// event log's append, shares their commit instead of costing one of its
// own. fn must write only through tx; an error from it fails the whole
// group.
func (s *Store) Group(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.w.do(ctx, fn)
}

// groupWrite is one caller's write. fn runs inside the group's transaction
// and must only write through tx. It returns the caller's own outcome when
// its statement matched no row (asset.ErrConflict, asset.ErrNotFound) as a
// domainError, which leaves the group alone; any other error from fn fails
// the whole group.
type groupWrite struct {
	ctx  context.Context
	fn   func(ctx context.Context, tx *sql.Tx) error
	done chan error // capacity 1; errLead hands over the lead
}

var errLead = errors.New("sqlitestore: lead the next group")

// domainError is an outcome of one write that needs no rollback: its
// statement matched no row.
type domainError struct{ err error }

func (e domainError) Error() string { return e.err.Error() }
func (e domainError) Unwrap() error { return e.err }

// do runs fn in a group transaction and returns once that transaction has
// committed (nil) or failed, or fn's own outcome. ctx is checked before fn
// runs; fn gets a context without ctx's cancellation, since interrupting a
// statement would roll back the other callers' writes too.
func (g *groupWriter) do(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &groupWrite{ctx: ctx, fn: fn, done: make(chan error, 1)}
	g.mu.Lock()
	g.waiting = append(g.waiting, w)
	lead := !g.leading
	g.leading = true
	g.mu.Unlock()
	if !lead {
		// Bounded: the group this write joins runs once the group before it
		// has committed.
		if err := <-w.done; err != errLead {
			return err
		}
	}
	g.mu.Lock()
	group := g.waiting
	g.waiting = nil
	g.mu.Unlock()

	g.run(group)

	g.mu.Lock()
	if len(g.waiting) > 0 {
		g.waiting[0].done <- errLead
	} else {
		g.leading = false
	}
	g.mu.Unlock()
	return <-w.done
}

// run commits group's writes in one transaction and answers each of them.
func (g *groupWriter) run(group []*groupWrite) {
	ctx := context.Background()
	tx, err := g.db.BeginTx(ctx, nil)
	if err != nil {
		answer(group, fmt.Errorf("begin: %w", err))
		return
	}
	outcomes := make([]error, len(group))
	for i, w := range group {
		if err := w.ctx.Err(); err != nil {
			outcomes[i] = err
			continue
		}
		err := w.fn(context.WithoutCancel(w.ctx), tx)
		var de domainError
		switch {
		case err == nil:
		case errors.As(err, &de):
			outcomes[i] = de.err
		default:
			// The transaction may be gone with it (SQLite rolls back on
			// I/O errors and full disks): undo the whole group.
			tx.Rollback()
			answer(group, err)
			return
		}
	}
	if err := tx.Commit(); err != nil {
		answer(group, fmt.Errorf("commit: %w", err))
		return
	}
	g.mu.Lock()
	g.groups++
	g.mu.Unlock()
	for i, w := range group {
		w.done <- outcomes[i]
	}
}

func answer(group []*groupWrite, err error) {
	for _, w := range group {
		w.done <- err
	}
}
