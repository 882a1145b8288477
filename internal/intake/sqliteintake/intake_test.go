package sqliteintake_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/idempotency/idempotencytest"
	"github.com/klectr/klectr/internal/idempotency/sqlitekeys"
	"github.com/klectr/klectr/internal/intake/sqliteintake"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
	"github.com/klectr/klectr/internal/wire"
)

type env struct {
	keys   *sqlitekeys.Keys
	db     *sqlitedb.DB
	store  *sqlitestore.Store
	queue  *riverqueue.Queue
	intake *sqliteintake.Intake
}

// newEnv opens the embedded backends on a fresh file, enqueue only (no
// worker), so that jobs stay where the intake put them.
func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := sqlitestore.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	q, err := riverqueue.New(ctx, db, riverqueue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := sqlitekeys.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	in := sqliteintake.New(db, store, q, keys, func() string { return ulid.Make().String() })
	t.Cleanup(in.Close)
	return &env{keys: keys, db: db, store: store, queue: q, intake: in}
}

func testAsset(id string) *asset.Asset {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &asset.Asset{ID: id, UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: ulid.Make().String(),
		ContentType: "image/png", Size: 10, SHA256: "00", Width: 1, Height: 1,
		BlobKey: "0123456789abcdef0123456789abcdef", CreatedAt: now, UpdatedAt: now}
}

// A group commit is all or nothing per request, never per group: one
// request that fails (a duplicate id) or whose client went away leaves the
// others of its group committed.
func TestIntakeGroupCommitIsolatesRequests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)

	taken := testAsset(ulid.Make().String())
	if err := e.intake.Submit(ctx, []*asset.Asset{taken}); err != nil {
		t.Fatal(err)
	}

	const n = 40
	errs := make([]error, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		id := ulid.Make().String()
		if i%10 == 3 {
			id = taken.ID // fails: the asset exists
		}
		ids[i] = id
		a := testAsset(id)
		rctx := ctx
		if i%10 == 7 {
			c, cancel := context.WithCancel(ctx)
			cancel() // the client went away before its turn
			rctx = c
		}
		wg.Go(func() { errs[i] = e.intake.Submit(rctx, []*asset.Asset{a}) })
	}
	wg.Wait()

	stored := 0
	for i, err := range errs {
		_, gerr := e.store.Get(ctx, ids[i])
		switch i % 10 {
		case 3:
			if !errors.Is(err, asset.ErrDuplicate) {
				t.Errorf("request %d (duplicate id): %v", i, err)
			}
		case 7:
			if !errors.Is(err, context.Canceled) || !errors.Is(gerr, asset.ErrNotFound) {
				t.Errorf("request %d (cancelled): err %v, stored %v", i, err, gerr)
			}
		default:
			if err != nil || gerr != nil {
				t.Errorf("request %d: err %v, get %v", i, err, gerr)
			}
			stored++
		}
	}
	counts, err := e.queue.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts[queue.Pending] != stored+1 {
		t.Fatalf("%d pending jobs for %d stored assets (+1 before)", counts[queue.Pending], stored)
	}
}

// Submit enqueues, for each asset, the job the contract describes: its id is
// the asset's processing job id, its payload names the asset and its blob.
func TestSubmitBuildsEachAssetsJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	as := []*asset.Asset{testAsset(ulid.Make().String()), testAsset(ulid.Make().String())}
	if err := e.intake.Submit(ctx, as); err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		info, err := e.queue.Get(ctx, a.ProcessingJobID)
		if err != nil {
			t.Fatal(err)
		}
		p, err := wire.DecodeJob(info.ID, info.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if info.Queue != queue.AIProcessing || info.State != queue.Pending || p.AssetID != a.ID ||
			p.UserID != a.UserID || p.BlobKey != a.BlobKey || p.SHA256 != a.SHA256 || p.Size != a.Size {
			t.Errorf("job %+v payload %+v for asset %+v", info, p, *a)
		}
	}
	e.intake.Close()
	if err := e.intake.Submit(ctx, []*asset.Asset{testAsset(ulid.Make().String())}); !errors.Is(err, sqliteintake.ErrClosed) {
		t.Fatalf("Submit after Close: %v, want ErrClosed", err)
	}
}

// setJobState moves a job's River row to state, as a worker would.
func (e *env) setJobState(t *testing.T, jobID, state string) {
	t.Helper()
	_, err := e.db.Write.Exec(`UPDATE river_job SET state = ?, attempt = 1,
		finalized_at = CASE WHEN ? IN ('discarded', 'completed') THEN datetime('now') END
		WHERE json_extract(args, '$.id') = ?`, state, state, jobID)
	if err != nil {
		t.Fatal(err)
	}
}

// Issue 7, defect 3: deleting a job that is not running fails its asset if
// the asset is still processing under it — in the same transaction, with
// its event owed — instead of stranding it in processing; the owner can then
// retry it. A running job is refused and nothing changes.
func TestDeleteJobFailsItsProcessingAsset(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	submit := func() *asset.Asset {
		a := testAsset(ulid.Make().String())
		if err := e.intake.Submit(ctx, []*asset.Asset{a}); err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, state := range []string{"available", "discarded", "retryable"} {
		a := submit()
		e.setJobState(t, a.ProcessingJobID, state)
		if err := e.intake.DeleteJob(ctx, a.ProcessingJobID); err != nil {
			t.Fatalf("%s job: %v", state, err)
		}
		got, err := e.store.Get(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != wire.CodeJobDeleted ||
			!got.EventPending || got.EventID == "" || got.ProcessedAt == nil {
			t.Errorf("%s job deleted: asset %+v, want failed with %s and its event owed", state, *got, wire.CodeJobDeleted)
		}
		if _, err := e.queue.Get(ctx, a.ProcessingJobID); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("%s job still there: %v", state, err)
		}
		if _, err := e.intake.Resubmit(ctx, a.ID, ulid.Make().String()); err != nil {
			t.Errorf("retry after the delete: %v", err)
		}
	}

	running := submit()
	e.setJobState(t, running.ProcessingJobID, "running")
	if err := e.intake.DeleteJob(ctx, running.ProcessingJobID); !errors.Is(err, queue.ErrActive) {
		t.Fatalf("delete of a running job: %v, want ErrActive", err)
	}
	if got, _ := e.store.Get(ctx, running.ID); got.Status != asset.StatusProcessing {
		t.Errorf("asset of a running job is %s after a refused delete", got.Status)
	}
	if _, err := e.queue.Get(ctx, running.ProcessingJobID); err != nil {
		t.Errorf("running job gone after a refused delete: %v", err)
	}

	// A job whose asset has moved on (finished, or retried under a new job)
	// goes without touching the asset.
	done := submit()
	if _, err := e.store.Finish(ctx, done.ID, done.ProcessingJobID, asset.Outcome{Status: asset.StatusDraft,
		EventID: "ev1", ProcessedAt: time.Now(), AIMetadata: []byte(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	e.setJobState(t, done.ProcessingJobID, "completed")
	if err := e.intake.DeleteJob(ctx, done.ProcessingJobID); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.store.Get(ctx, done.ID); got.Status != asset.StatusDraft || got.EventID != "ev1" {
		t.Errorf("a draft asset changed when its completed job was deleted: %+v", *got)
	}
	if err := e.intake.DeleteJob(ctx, done.ProcessingJobID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

// The embedded shape's keyed intake passes the conformance suite on a real
// SQLite file.
func TestSubmitOnce(t *testing.T) {
	t.Parallel()
	idempotencytest.TestSubmitter(t, func(t *testing.T) idempotencytest.Env {
		e := newEnv(t)
		return idempotencytest.Env{Submitter: e.intake, Assets: func(ctx context.Context, user string) (int, error) {
			p, err := e.store.List(ctx, user, asset.ListQuery{Limit: 100})
			return len(p.Assets), err
		}}
	})
}

// The key's record commits with the assets and jobs or not at all: a
// submission whose transaction fails (here: a job id the queue has) leaves
// neither assets nor a record, and the record of one that commits is in the
// file, not only in memory (a new Keys on the file sees it).
func TestSubmitOnceRecordIsInTheAssetsTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	first := []*asset.Asset{testAsset(ulid.Make().String())}
	if err := e.intake.Submit(ctx, first); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	c := idempotency.Claim{UserID: "u1", Key: "k", Fingerprint: "f", Response: []byte(`{}`), At: at}
	bad := testAsset(ulid.Make().String())
	bad.ProcessingJobID = first[0].ProcessingJobID
	if _, err := e.intake.SubmitOnce(ctx, []*asset.Asset{bad}, c); err == nil {
		t.Fatal("a submission whose job id is taken succeeded")
	}
	if r, err := e.keys.Get(ctx, "u1", "k", at); err != nil || r != nil {
		t.Fatalf("record after a failed submission: %+v, %v", r, err)
	}
	if _, err := e.store.Get(ctx, bad.ID); !errors.Is(err, asset.ErrNotFound) {
		t.Fatalf("asset of a failed submission: %v", err)
	}
	good := testAsset(ulid.Make().String())
	if r, err := e.intake.SubmitOnce(ctx, []*asset.Asset{good}, c); err != nil || r != nil {
		t.Fatalf("retry: %v %v", r, err)
	}
	reopened, err := sqlitekeys.New(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	r, err := reopened.Get(ctx, "u1", "k", at)
	if err != nil || r == nil || r.Fingerprint != "f" || !r.ExpiresAt.Equal(c.ExpiresAt().Truncate(time.Millisecond)) {
		t.Fatalf("record on the file: %+v, %v", r, err)
	}
	if n, err := reopened.Expire(ctx, c.ExpiresAt()); err != nil || n != 1 {
		t.Fatalf("Expire at ExpiresAt: %d, %v", n, err)
	}
	if r, err := reopened.Get(ctx, "u1", "k", at); err != nil || r != nil {
		t.Fatalf("record after Expire: %+v, %v", r, err)
	}
}

// While a keyed submission waits for its transaction, another request of
// the key gets ErrInFlight (same body) or ErrReused (another body), and
// then the first one's response.
func TestSubmitOnceInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	// Holding the one write connection keeps the committer waiting.
	tx, err := e.db.Write.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := idempotency.Claim{UserID: "u1", Key: "k", Fingerprint: "f", Response: []byte(`{"first":true}`), At: time.Now()}
	first := make(chan error, 1)
	go func() {
		_, err := e.intake.SubmitOnce(ctx, []*asset.Asset{testAsset(ulid.Make().String())}, c)
		first <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		release, err := e.keys.Hold(c)
		if errors.Is(err, idempotency.ErrInFlight) {
			break
		}
		if err == nil {
			release() // the first request has not got there yet
		}
		if time.Now().After(deadline) {
			t.Fatal("the first request never held its key")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if _, err := e.intake.SubmitOnce(ctx, []*asset.Asset{testAsset(ulid.Make().String())}, c); !errors.Is(err, idempotency.ErrInFlight) {
		t.Fatalf("same key and body in flight: %v, want ErrInFlight", err)
	}
	other := c
	other.Fingerprint = "g"
	if _, err := e.intake.SubmitOnce(ctx, []*asset.Asset{testAsset(ulid.Make().String())}, other); !errors.Is(err, idempotency.ErrReused) {
		t.Fatalf("same key, other body in flight: %v, want ErrReused", err)
	}
	tx.Rollback()
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first request did not finish")
	}
	r, err := e.intake.SubmitOnce(ctx, []*asset.Asset{testAsset(ulid.Make().String())}, c)
	if err != nil || r == nil || string(r.Response) != `{"first":true}` {
		t.Fatalf("after the first: %+v, %v", r, err)
	}
}

// The record is written with the assets, and a record that cannot be
// written takes the assets down with it: two intakes on one file (each
// with its own in-memory holds, so both get past them) race on one key, and
// the loser leaves neither assets nor jobs.
func TestSubmitOnceRecordAndAssetsFailTogether(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	keysB, err := sqlitekeys.New(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	b := sqliteintake.New(e.db, e.store, e.queue, keysB, func() string { return ulid.Make().String() })
	t.Cleanup(b.Close)
	tx, err := e.db.Write.BeginTx(ctx, nil) // both wait for the write connection
	if err != nil {
		t.Fatal(err)
	}
	c := idempotency.Claim{UserID: "u1", Key: "k", Fingerprint: "f", Response: []byte(`{}`), At: time.Now()}
	as := [][]*asset.Asset{{testAsset(ulid.Make().String())}, {testAsset(ulid.Make().String())}}
	errs := make(chan error, 2)
	for i, in := range []*sqliteintake.Intake{e.intake, b} {
		go func() {
			_, err := in.SubmitOnce(ctx, as[i], c)
			errs <- err
		}()
	}
	// Both hold the key (each in its own intake), then read "no record" —
	// one indexed read on the read pool, which the held write connection
	// does not block — and wait for the commit.
	deadline := time.Now().Add(10 * time.Second)
	for _, k := range []*sqlitekeys.Keys{e.keys, keysB} {
		for {
			release, err := k.Hold(c)
			if errors.Is(err, idempotency.ErrInFlight) {
				break
			}
			if err == nil {
				release()
			}
			if time.Now().After(deadline) {
				t.Fatal("the submissions never held the key")
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	time.Sleep(100 * time.Millisecond)
	tx.Rollback()
	var failed int
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				failed++
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the submissions did not finish")
		}
	}
	p, err := e.store.List(ctx, "u1", asset.ListQuery{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	counts, err := e.queue.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if failed != 1 || len(p.Assets) != 1 || counts[queue.Pending] != 1 {
		t.Fatalf("%d failed, %d assets, %d jobs; want 1 each", failed, len(p.Assets), counts[queue.Pending])
	}
}
