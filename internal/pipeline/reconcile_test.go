package pipeline_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// processing adds asset.Store's Processing to the fake store.
type processing struct{ *fakeStore }

func (s processing) Processing(ctx context.Context, before time.Time, after string, limit int) ([]*asset.Asset, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*asset.Asset
	for _, a := range s.assets {
		if a.Status == asset.StatusProcessing && a.ID > after && a.UpdatedAt.Before(before) {
			out = append(out, a.Clone())
		}
	}
	slices.SortFunc(out, func(a, b *asset.Asset) int { return strings.Compare(a.ID, b.ID) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// jobQueue is a map of jobs; Enqueue refuses a known id like every backend.
type jobQueue struct {
	mu       sync.Mutex
	jobs     map[string]queue.Info
	enqueued []string
	getErr   error
}

func (q *jobQueue) Get(_ context.Context, id string) (queue.Info, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.getErr != nil {
		return queue.Info{}, q.getErr
	}
	i, ok := q.jobs[id]
	if !ok {
		return queue.Info{}, queue.ErrNotFound
	}
	return i, nil
}

func (q *jobQueue) Enqueue(_ context.Context, jobs ...queue.Job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, j := range jobs {
		if _, ok := q.jobs[j.ID]; ok {
			return queue.ErrDuplicate
		}
	}
	for _, j := range jobs {
		q.jobs[j.ID] = queue.Info{ID: j.ID, Queue: j.Queue, State: queue.Pending, Payload: j.Payload}
		q.enqueued = append(q.enqueued, j.ID)
	}
	return nil
}

func (q *jobQueue) put(a *asset.Asset, st queue.State, errs ...string) {
	job, _ := wire.NewJob(context.Background(), a, a.CreatedAt)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.jobs[job.ID] = queue.Info{ID: job.ID, Queue: job.Queue, State: st, Payload: job.Payload, Attempt: 4, MaxAttempts: 4, Errors: errs}
}

// The reconciler re-enqueues the job of a processing asset the queue does
// not know, under the same id and with the payload the intake would have
// built; fails (with its event) an asset whose job is dead or completed;
// leaves alone assets with a live job and assets changed within the grace.
// A second pass, or a second node, changes nothing more.
func TestReconcilerRepairsProcessingAssets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil, envOptions{})
	q := &jobQueue{jobs: map[string]queue.Info{}}
	r := &pipeline.Reconciler{Handler: e.h, Assets: processing{e.store}, Jobs: q, Grace: 30 * time.Second, PageSize: 2}
	ctx := context.Background()

	lost, _ := e.newAsset()    // no job: a crash between the asset write and the enqueue
	lost2, _ := e.newAsset()   // the same, to page past PageSize
	dead, _ := e.newAsset()    // its job died on a killed last attempt
	done, _ := e.newAsset()    // its job completed but never recorded a result
	pending, _ := e.newAsset() // waiting in line
	fresh, _ := e.newAsset()   // no job yet, but within the grace
	q.put(dead, queue.Dead, "worker stopped during the attempt")
	q.put(done, queue.Completed)
	q.put(pending, queue.Pending)
	fresh.UpdatedAt = e.clock.Now().Add(-time.Second)
	e.store.put(fresh)

	st, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Checked != 5 || st.Enqueued != 2 || st.Failed != 2 {
		t.Fatalf("stats %+v, want 5 checked, 2 enqueued, 2 failed", st)
	}
	for _, a := range []*asset.Asset{lost, lost2} {
		info, err := q.Get(ctx, a.ProcessingJobID)
		if err != nil {
			t.Fatalf("job of %s not enqueued: %v", a.ID, err)
		}
		p, err := wire.DecodeJob(info.ID, info.Payload)
		if err != nil || p.AssetID != a.ID || p.BlobKey != a.BlobKey || p.UserID != a.UserID {
			t.Fatalf("re-enqueued payload %+v (%v) for %+v", p, err, *a)
		}
		if got := e.store.get(t, a.ID); got.Status != asset.StatusProcessing {
			t.Errorf("asset %s is %s after its job was enqueued again", a.ID, got.Status)
		}
	}
	for _, a := range []*asset.Asset{dead, done} {
		got := e.store.get(t, a.ID)
		if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != "job_dead" || got.EventID == "" {
			t.Errorf("asset %s: %+v, want failed job_dead", a.ID, *got)
		}
	}
	if got := e.store.get(t, dead.ID); !strings.Contains(got.Error.Message, "worker stopped") {
		t.Errorf("dead job's asset does not say why: %q", got.Error.Message)
	}
	if n := len(e.notes.delivered()); n != 2 {
		t.Errorf("%d events sent, want 2 (the failed assets')", n)
	}
	for _, a := range []*asset.Asset{pending, fresh} {
		if got := e.store.get(t, a.ID); got.Status != asset.StatusProcessing {
			t.Errorf("asset %s changed: %s", a.ID, got.Status)
		}
	}
	if _, err := q.Get(ctx, fresh.ProcessingJobID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("an asset within the grace got a job: %v", err)
	}

	// Two nodes at once, on a new lost asset and a new dead job: the job is
	// enqueued once and the asset failed once (one event).
	lost3, _ := e.newAsset()
	dead2, _ := e.newAsset()
	q.put(dead2, queue.Dead)
	r2 := *r
	var wg sync.WaitGroup
	var st1, st2 pipeline.ReconcileStats
	var err1, err2 error
	wg.Go(func() { st1, err1 = r.Run(ctx) })
	wg.Go(func() { st2, err2 = r2.Run(ctx) })
	wg.Wait()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if st1.Enqueued+st2.Enqueued != 1 || len(q.enqueued) != 3 || q.enqueued[2] != lost3.ProcessingJobID {
		t.Fatalf("two nodes enqueued %d+%d times: %v", st1.Enqueued, st2.Enqueued, q.enqueued)
	}
	if n := len(e.notes.delivered()); n != 3 {
		t.Fatalf("%d events after two nodes failed one asset, want 3", n)
	}
	if got := e.store.get(t, dead2.ID); got.Status != asset.StatusFailed {
		t.Fatalf("dead2 is %s", got.Status)
	}
	// And a later pass finds nothing to do.
	if st, err := r.Run(ctx); err != nil || st.Enqueued+st.Failed != 0 {
		t.Fatalf("a later pass: %+v %v", st, err)
	}

	// The queue down: the pass stops with the error and changes nothing.
	e.clock.Add(time.Minute)
	q.getErr = errors.New("redis: connection refused")
	if _, err := r.Run(ctx); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("pass with the queue down: %v", err)
	}
}
