package splitintake_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/intake/splitintake"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// memStore is an in-memory splitintake.Store with asset.Store's guards.
type memStore struct {
	mu        sync.Mutex
	byID      map[string]*asset.Asset
	deleteErr error
	onCreate  func(ctx context.Context) error // when set, Create calls it first
}

func newMemStore() *memStore { return &memStore{byID: map[string]*asset.Asset{}} }

func (s *memStore) Create(ctx context.Context, as ...*asset.Asset) error {
	s.mu.Lock()
	hook := s.onCreate
	s.mu.Unlock()
	if hook != nil {
		if err := hook(ctx); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range as {
		if _, ok := s.byID[a.ID]; ok {
			return asset.ErrDuplicate
		}
	}
	for _, a := range as {
		s.byID[a.ID] = a.Clone()
	}
	return nil
}

func (s *memStore) Get(_ context.Context, id string) (*asset.Asset, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byID[id]
	if !ok {
		return nil, asset.ErrNotFound
	}
	return a.Clone(), nil
}

func (s *memStore) Reprocess(_ context.Context, id, jobID string, now time.Time) (*asset.Asset, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byID[id]
	if !ok {
		return nil, asset.ErrNotFound
	}
	if a.Status != asset.StatusFailed {
		return nil, asset.ErrConflict
	}
	a.Status, a.ProcessingJobID, a.Error, a.EventID, a.EventPending, a.UpdatedAt = asset.StatusProcessing, jobID, nil, "", false, now
	return a.Clone(), nil
}

func (s *memStore) Finish(_ context.Context, id, jobID string, out asset.Outcome) (*asset.Asset, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byID[id]
	if !ok {
		return nil, asset.ErrNotFound
	}
	if a.Status != asset.StatusProcessing || a.ProcessingJobID != jobID {
		return nil, asset.ErrConflict
	}
	p := out.ProcessedAt
	a.Status, a.Error, a.AIMetadata, a.Attempts, a.ProcessedAt, a.UpdatedAt = out.Status, out.Error, out.AIMetadata, out.Attempts, &p, p
	a.EventID, a.EventPending = out.EventID, true
	return a.Clone(), nil
}

func (s *memStore) Delete(_ context.Context, ids ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deleteErr != nil {
		return s.deleteErr
	}
	for _, id := range ids {
		delete(s.byID, id)
	}
	return nil
}

// memQueue is an in-memory splitintake.Queue.
type memQueue struct {
	mu         sync.Mutex
	jobs       map[string]queue.Info
	enqueueErr error
	deleteErr  error
}

func newMemQueue() *memQueue { return &memQueue{jobs: map[string]queue.Info{}} }

func (q *memQueue) Enqueue(_ context.Context, jobs ...queue.Job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.enqueueErr != nil {
		return q.enqueueErr
	}
	for _, j := range jobs {
		if _, ok := q.jobs[j.ID]; ok {
			return queue.ErrDuplicate
		}
	}
	for _, j := range jobs {
		q.jobs[j.ID] = queue.Info{ID: j.ID, Queue: j.Queue, State: queue.Pending, Payload: j.Payload, EnqueuedAt: j.EnqueuedAt}
	}
	return nil
}

func (q *memQueue) Get(_ context.Context, id string) (queue.Info, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	i, ok := q.jobs[id]
	if !ok {
		return queue.Info{}, queue.ErrNotFound
	}
	return i, nil
}

func (q *memQueue) Retry(_ context.Context, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	i, ok := q.jobs[id]
	switch {
	case !ok:
		return queue.ErrNotFound
	case i.State != queue.Dead:
		return queue.ErrNotDead
	}
	i.State = queue.Pending
	q.jobs[id] = i
	return nil
}

func (q *memQueue) Delete(_ context.Context, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	i, ok := q.jobs[id]
	switch {
	case q.deleteErr != nil:
		return q.deleteErr
	case !ok:
		return queue.ErrNotFound
	case i.State == queue.Active:
		return queue.ErrActive
	}
	delete(q.jobs, id)
	return nil
}

func (q *memQueue) setState(id string, st queue.State) {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := q.jobs[id]
	i.State = st
	q.jobs[id] = i
}

func testAsset() *asset.Asset {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &asset.Asset{ID: ulid.Make().String(), UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: ulid.Make().String(),
		ContentType: "image/png", Size: 10, SHA256: "00", Width: 1, Height: 1,
		BlobKey: "0123456789abcdef0123456789abcdef", CreatedAt: now, UpdatedAt: now}
}

func newIntake(s *memStore, q *memQueue, logs *bytes.Buffer) *splitintake.Intake {
	return splitintake.New(s, q, nil, func() string { return ulid.Make().String() }, slog.New(slog.NewTextHandler(logs, nil)))
}

func TestSubmitWritesAssetsThenJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, q := newMemStore(), newMemQueue()
	in := newIntake(s, q, new(bytes.Buffer))
	as := []*asset.Asset{testAsset(), testAsset()}
	if err := in.Submit(ctx, as); err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if _, err := s.Get(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		info, err := q.Get(ctx, a.ProcessingJobID)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := wire.DecodeJob(info.ID, info.Payload); err != nil || p.AssetID != a.ID {
			t.Fatalf("job of %s: payload %+v, %v", a.ID, p, err)
		}
	}
	// A duplicate asset id enqueues nothing.
	dup := testAsset()
	dup.ID = as[0].ID
	if err := in.Submit(ctx, []*asset.Asset{dup}); !errors.Is(err, asset.ErrDuplicate) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := q.Get(ctx, dup.ProcessingJobID); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("a refused asset's job was enqueued: %v", err)
	}
}

// A failed enqueue deletes the request's assets (nothing accepted); if that
// delete fails too, the assets stay processing for the reconciler and the
// failure is logged.
func TestSubmitCompensatesAFailedEnqueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	down := errors.New("redis: connection refused")
	s, q := newMemStore(), newMemQueue()
	q.enqueueErr = down
	var logs bytes.Buffer
	in := newIntake(s, q, &logs)
	as := []*asset.Asset{testAsset(), testAsset()}
	if err := in.Submit(ctx, as); !errors.Is(err, down) {
		t.Fatalf("Submit: %v, want the enqueue's error", err)
	}
	for _, a := range as {
		if _, err := s.Get(ctx, a.ID); !errors.Is(err, asset.ErrNotFound) {
			t.Fatalf("asset %s left after a failed enqueue: %v", a.ID, err)
		}
	}

	s.deleteErr = errors.New("mongo: down")
	a := testAsset()
	if err := in.Submit(ctx, []*asset.Asset{a}); !errors.Is(err, down) {
		t.Fatalf("Submit: %v", err)
	}
	if got, err := s.Get(ctx, a.ID); err != nil || got.Status != asset.StatusProcessing {
		t.Fatalf("asset after failed compensation: %v %v", got, err)
	}
	if !bytes.Contains(logs.Bytes(), []byte("reconciler")) {
		t.Fatalf("failed compensation not logged: %s", logs.String())
	}
}

// Resubmit's asset change is the request: a failed enqueue after it is left
// to the reconciler, and the asset stays processing under the new job.
func TestResubmitKeepsTheAssetWhenTheEnqueueFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, q := newMemStore(), newMemQueue()
	a := testAsset()
	a.Status = asset.StatusFailed
	s.Create(ctx, a)
	in := newIntake(s, q, new(bytes.Buffer))
	q.enqueueErr = errors.New("redis: down")
	got, err := in.Resubmit(ctx, a.ID, "01KNEWJOB00000000000000000")
	if err != nil || got.Status != asset.StatusProcessing || got.ProcessingJobID != "01KNEWJOB00000000000000000" {
		t.Fatalf("Resubmit: %+v %v", got, err)
	}
	q.enqueueErr = nil
	if _, err := in.Resubmit(ctx, a.ID, ulid.Make().String()); !errors.Is(err, asset.ErrConflict) {
		t.Fatalf("Resubmit of a processing asset: %v, want ErrConflict", err)
	}
}

func TestReplayMovesTheAssetBackFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, q := newMemStore(), newMemQueue()
	in := newIntake(s, q, new(bytes.Buffer))
	a := testAsset()
	if err := in.Submit(ctx, []*asset.Asset{a}); err != nil {
		t.Fatal(err)
	}
	if err := in.Replay(ctx, a.ProcessingJobID); !errors.Is(err, queue.ErrNotDead) {
		t.Fatalf("Replay of a pending job: %v", err)
	}
	q.setState(a.ProcessingJobID, queue.Dead)
	if _, err := s.Finish(ctx, a.ID, a.ProcessingJobID, asset.Outcome{Status: asset.StatusFailed, EventID: "e1", ProcessedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := in.Replay(ctx, a.ProcessingJobID); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(ctx, a.ID)
	info, _ := q.Get(ctx, a.ProcessingJobID)
	if got.Status != asset.StatusProcessing || got.ProcessingJobID != a.ProcessingJobID || info.State != queue.Pending {
		t.Fatalf("after replay: asset %s under %s, job %s", got.Status, got.ProcessingJobID, info.State)
	}
}

// Issue 7, defect 3 in the split shape: the asset is failed first
// (job_deleted, event owed), then the job goes; a running job is refused
// before anything changes.
func TestDeleteJobFailsTheAssetFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, q := newMemStore(), newMemQueue()
	in := newIntake(s, q, new(bytes.Buffer))
	a, running := testAsset(), testAsset()
	if err := in.Submit(ctx, []*asset.Asset{a, running}); err != nil {
		t.Fatal(err)
	}
	q.setState(running.ProcessingJobID, queue.Active)
	if err := in.DeleteJob(ctx, running.ProcessingJobID); !errors.Is(err, queue.ErrActive) {
		t.Fatalf("delete of a running job: %v", err)
	}
	if got, _ := s.Get(ctx, running.ID); got.Status != asset.StatusProcessing {
		t.Fatalf("a refused delete changed the asset: %+v", *got)
	}

	// The queue fails after the asset was failed: the asset still ends
	// failed, and the job, when it runs, finds nothing to do.
	q.deleteErr = errors.New("redis: down")
	if err := in.DeleteJob(ctx, a.ProcessingJobID); err == nil {
		t.Fatal("delete with the queue down succeeded")
	}
	got, _ := s.Get(ctx, a.ID)
	if got.Status != asset.StatusFailed || got.Error.Code != wire.CodeJobDeleted || !got.EventPending {
		t.Fatalf("asset after its job's delete: %+v", *got)
	}
	q.deleteErr = nil
	if err := in.DeleteJob(ctx, a.ProcessingJobID); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.Get(ctx, a.ID); again.EventID != got.EventID {
		t.Fatalf("a second delete changed the failed asset's event: %s then %s", got.EventID, again.EventID)
	}
	if err := in.DeleteJob(ctx, a.ProcessingJobID); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("delete of a deleted job: %v", err)
	}
}
