package riverqueue_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// newDB opens a fresh database with a table of our own beside River's.
func newDB(t *testing.T) *sqlitedb.DB {
	t.Helper()
	db, err := sqlitedb.Open(context.Background(), filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Write.Exec(`CREATE TABLE things (id TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	return db
}

func newQueue(t testing.TB, db *sqlitedb.DB, cfg riverqueue.Config) *riverqueue.Queue {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	q, err := riverqueue.New(context.Background(), db, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := q.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return q
}

func rowExists(t *testing.T, db *sqlitedb.DB, id string) bool {
	t.Helper()
	var n int
	if err := db.Read.QueryRow(`SELECT count(*) FROM things WHERE id = ?`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func jobExists(t *testing.T, q *riverqueue.Queue, id string) bool {
	t.Helper()
	_, err := q.Get(t.Context(), id)
	if err != nil && !errors.Is(err, queue.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// TestEnqueueTxIsAtomicWithTheCallersRows: the upload path's promise — an
// asset row and its job commit together or not at all.
func TestEnqueueTxIsAtomicWithTheCallersRows(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ran := make(chan string, 1)
	q := newQueue(t, db, riverqueue.Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		select {
		case ran <- job.ID:
		case <-ctx.Done():
		}
		return nil
	})})
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	job := func(id string) queue.Job {
		return queue.Job{ID: id, Queue: queue.AIProcessing, Payload: json.RawMessage(`{"assetId":"` + id + `"}`)}
	}
	inTx := func(id string, commit bool) {
		tx, err := db.Write.BeginTx(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO things (id) VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
		if err := q.EnqueueTx(t.Context(), tx, job(id)); err != nil {
			t.Fatalf("EnqueueTx: %v", err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	inTx("rolled-back", false)
	if rowExists(t, db, "rolled-back") || jobExists(t, q, "rolled-back") {
		t.Errorf("after rollback: row %v, job %v; want neither", rowExists(t, db, "rolled-back"), jobExists(t, q, "rolled-back"))
	}
	inTx("committed", true)
	if !rowExists(t, db, "committed") || !jobExists(t, q, "committed") {
		t.Errorf("after commit: row %v, job %v; want both", rowExists(t, db, "committed"), jobExists(t, q, "committed"))
	}
	if id := receive(t, ran, "the committed job to run"); id != "committed" {
		t.Errorf("ran %q, want only the committed job", id)
	}

	// A duplicate inside a transaction fails it with ErrDuplicate.
	tx, err := db.Write.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if err := q.EnqueueTx(t.Context(), tx, job("committed")); !errors.Is(err, queue.ErrDuplicate) {
		t.Errorf("EnqueueTx of an existing ID: %v, want ErrDuplicate", err)
	}
}

// TestRetryTxIsAtomicWithTheCallersRows: a replay and the caller's own
// writes commit together.
func TestRetryTxIsAtomicWithTheCallersRows(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	var replayed atomic.Bool
	ran := make(chan int, 2)
	q := newQueue(t, db, riverqueue.Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		select {
		case ran <- job.Attempt:
		case <-ctx.Done():
		}
		if !replayed.Load() {
			return queue.Permanent(errors.New("rejected"))
		}
		return nil
	})})
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(t.Context(), queue.Job{ID: "j", Queue: queue.AIProcessing, Payload: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	receive(t, ran, "the job to run")
	waitState(t, q, "j", queue.Dead)

	replay := func(commit bool) {
		tx, err := db.Write.BeginTx(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := tx.Exec(`INSERT INTO things (id) VALUES ('replayed')`); err != nil {
			t.Fatal(err)
		}
		if err := q.RetryTx(t.Context(), tx, "j"); err != nil {
			t.Fatalf("RetryTx: %v", err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	replay(false)
	if info, _ := q.Get(t.Context(), "j"); info.State != queue.Dead || rowExists(t, db, "replayed") {
		t.Fatalf("after a rolled-back replay: job %s, row %v; want dead and no row", info.State, rowExists(t, db, "replayed"))
	}
	replayed.Store(true)
	replay(true)
	if attempt := receive(t, ran, "the replayed job to run"); attempt != 1 || !rowExists(t, db, "replayed") {
		t.Errorf("after a committed replay: ran at attempt %d, row %v; want 1 and the row", attempt, rowExists(t, db, "replayed"))
	}
	waitState(t, q, "j", queue.Completed)
}

// TestCompleteTxCommitsWithTheHandlersWrites: a handler can record its
// result and the job's completion in one transaction.
func TestCompleteTxCommitsWithTheHandlersWrites(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	var q *riverqueue.Queue
	done := make(chan error, 1)
	q = newQueue(t, db, riverqueue.Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		err := func() error {
			tx, err := db.Write.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, `INSERT INTO things (id) VALUES (?)`, job.ID); err != nil {
				return err
			}
			if err := q.CompleteTx(ctx, tx); err != nil {
				return err
			}
			return tx.Commit()
		}()
		done <- err
		return err
	})})
	if err := q.CompleteTx(t.Context(), nil); err == nil {
		t.Errorf("CompleteTx outside a handler succeeded")
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(t.Context(), queue.Job{ID: "j1", Queue: queue.AIProcessing, Payload: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, done, "the handler to commit"); err != nil {
		t.Fatalf("handler: %v", err)
	}
	// Completed by the handler's commit itself, not later by River.
	info, err := q.Get(t.Context(), "j1")
	if err != nil || info.State != queue.Completed || !rowExists(t, db, "j1") {
		t.Errorf("after the handler's commit: %+v, %v, row %v; want completed and the row", info, err, rowExists(t, db, "j1"))
	}
}

// TestRecoverOnStartEndsJobsOnTheirLastAttempt: a job that was on its last
// attempt when its process died is dead after recovery, not run again, so a
// job that crashes its worker cannot loop; one with attempts left runs.
func TestRecoverOnStartEndsJobsOnTheirLastAttempt(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	policy := queue.Policy{Retries: 1, Backoff: 1}
	api := newQueue(t, db, riverqueue.Config{Policy: policy})
	if err := api.Enqueue(t.Context(),
		queue.Job{ID: "last", Queue: queue.AIProcessing, Payload: json.RawMessage(`1`)},
		queue.Job{ID: "more", Queue: queue.AIProcessing, Payload: json.RawMessage(`2`)}); err != nil {
		t.Fatal(err)
	}
	// What a process killed mid-run leaves behind.
	markRunning(t, db.Write, "last", 2)
	markRunning(t, db.Write, "more", 1)
	for _, id := range []string{"last", "more"} {
		if info, _ := api.Get(t.Context(), id); info.State != queue.Active {
			t.Fatalf("%s is %s before recovery, want active", id, info.State)
		}
	}

	ran := make(chan *queue.Job, 2)
	worker := newQueue(t, db, riverqueue.Config{Policy: policy, RecoverOnStart: true, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		select {
		case ran <- job:
		case <-ctx.Done():
		}
		return nil
	})})
	if err := worker.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if j := receive(t, ran, "the recovered job to run"); j.ID != "more" || j.Attempt != 2 {
		t.Errorf("ran %s at attempt %d, want more at 2", j.ID, j.Attempt)
	}
	info, err := worker.Get(t.Context(), "last")
	if err != nil || info.State != queue.Dead || info.LastError() == "" {
		t.Errorf("job on its last attempt after recovery: %+v, %v; want dead with an error", info, err)
	}
	waitState(t, worker, "more", queue.Completed)
	if n, _ := worker.Counts(t.Context()); n[queue.Active] != 0 || n[queue.Dead] != 1 {
		t.Errorf("Counts after recovery = %v, want nothing active, one dead", n)
	}
}

func markRunning(t *testing.T, db *sql.DB, id string, attempt int) {
	t.Helper()
	_, err := db.Exec(`UPDATE river_job SET state = 'running', attempt = ?, attempted_at = datetime('now', 'subsec')
		WHERE json_extract(args, '$.id') = ?`, attempt, id)
	if err != nil {
		t.Fatal(err)
	}
}

// receive returns the next value from ch, failing t if none comes within 10
// s: a regression fails here rather than hanging until the global timeout.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

func waitState(t *testing.T, q *riverqueue.Queue, id string, want queue.State) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := q.Get(t.Context(), id)
		if err == nil && info.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s (%v), want %s", id, info.State, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
