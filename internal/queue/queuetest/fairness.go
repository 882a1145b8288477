package queuetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// fairness is the case of issue 10: group A's batch of 1,000 is enqueued
// first, then group B's one job. Under the Backend contract at most
// Concurrency + FairBurst jobs (A has the only other backlog) start from
// B's Enqueue until B's job starts, whatever the size of A's batch.
func (s suite) fairness(t *testing.T) {
	const concurrency, batch = 2, 1000
	var (
		mu     sync.Mutex
		starts []string
		at     = map[string]time.Time{}
	)
	b, _ := s.started(t, Config{Concurrency: concurrency, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		mu.Lock()
		starts = append(starts, job.ID)
		at[job.ID] = time.Now()
		mu.Unlock()
		select { // a short job
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	})})
	jobs := make([]queue.Job, batch)
	for i := range jobs {
		jobs[i] = newJob(t)
		jobs[i].Group = "A"
	}
	enqueue(t, b, jobs...)
	single := newJob(t)
	single.Group = "B"
	mu.Lock()
	from := len(starts) // what starts during B's Enqueue counts as ahead of it
	mu.Unlock()
	begin := time.Now()
	enqueue(t, b, single)

	var ahead int
	eventually(t, "B's job to start", func() bool {
		mu.Lock()
		defer mu.Unlock()
		i := slices.Index(starts, single.ID)
		ahead = i - from
		return i >= 0
	})
	mu.Lock()
	waited := at[single.ID].Sub(begin)
	mu.Unlock()
	t.Logf("B's job, behind A's batch of %d (concurrency %d, 5 ms jobs): %d jobs started ahead of it, started %v after its Enqueue",
		batch, concurrency, ahead, waited.Round(time.Millisecond))
	if limit := concurrency + queue.FairBurst; ahead > limit {
		t.Errorf("%d jobs of group A started after B's job was enqueued and before it; the contract allows %d (concurrency %d + FairBurst %d)",
			ahead, limit, concurrency, queue.FairBurst)
	}
}

// groupOrder: with concurrency 1, each group's jobs start in the order they
// were enqueued, also when a group's backlog has shrunk below FairBurst
// while its waiting jobs sit in a worse tier (a new job must not overtake
// them); and a group with nothing waiting goes ahead of a deep backlog.
func (s suite) groupOrder(t *testing.T) {
	started := make(chan *queue.Job, 100)
	release := make(chan struct{})
	// The worker starts after A's first batch is stored: an idle worker
	// polling tier by tier while one Enqueue fills several tiers may take a
	// worse tier's job first, which the contract allows (Backend, Order).
	b := s.open(t, s.f.NewStorage(t), Config{Concurrency: 1, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		started <- job
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})})
	var order []queue.Job // enqueue order
	add := func(group string, n int) {
		t.Helper()
		batch := make([]queue.Job, n)
		for i := range batch {
			batch[i] = newJob(t)
			batch[i].Group = group
		}
		enqueue(t, b, batch...)
		order = append(order, batch...)
	}
	// A's 40 jobs fill tiers 1 (4), 2 (28) and 3 (8).
	add("A", 40)
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var got []*queue.Job
	for len(got) < 37 {
		if len(got) > 0 {
			release <- struct{}{}
		}
		got = append(got, recv(t, started, fmt.Sprintf("start %d", len(got)+1)))
	}
	// A's 37th runs; its last 3 wait, in tier 3: a backlog of 3, which
	// alone would give a new job tier 1.
	add("A", 1)
	add("D", 1)
	close(release)
	for len(got) < len(order) {
		got = append(got, recv(t, started, fmt.Sprintf("start %d", len(got)+1)))
	}

	// Each job by its place in the enqueue order, and each group's jobs in
	// the order they started.
	place := map[string]int{}
	for i, j := range order {
		place[j.ID] = i
	}
	started1 := map[string][]int{}
	var all []int
	for _, j := range got {
		started1[j.Group] = append(started1[j.Group], place[j.ID])
		all = append(all, place[j.ID])
	}
	for g, seq := range started1 {
		if !slices.IsSorted(seq) {
			t.Errorf("group %s started its jobs (by enqueue order) as %v, want ascending", g, seq)
		}
	}
	if len(started1["A"]) != 41 || len(started1["D"]) != 1 {
		t.Errorf("started %d jobs of A and %d of D, want 41 and 1 (handlers must see Job.Group)", len(started1["A"]), len(started1["D"]))
	}
	// D's job (enqueued 42nd) goes before A's 38th, which waits in tier 3.
	if d, a38 := slices.Index(all, 41), slices.Index(all, 37); d > a38 {
		t.Errorf("D's only job started %dth, after A's 38th job (%dth), which was in tier 3; want it first", d+1, a38+1)
	}
}

// adminInEveryTier: the admin calls count, list, get, delete and replay jobs
// whatever tier they wait in (a batch of 300 fills all four).
func (s suite) adminInEveryTier(t *testing.T) {
	const n = 300
	storage := s.f.NewStorage(t)
	api := s.open(t, storage, Config{})
	jobs := make([]queue.Job, n)
	base := time.Now().UTC().Truncate(time.Second)
	for i := range jobs {
		jobs[i] = newJob(t)
		jobs[i].Group = "A"
		jobs[i].EnqueuedAt = base.Add(time.Duration(i) * time.Millisecond)
	}
	enqueue(t, api, jobs...)
	if c := counts(t, api); c[queue.Pending] != n {
		t.Errorf("Counts = %v, want %d pending", c, n)
	}
	list, err := api.List(t.Context(), queue.Pending, 3)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var got []string
	for _, info := range list {
		got = append(got, info.ID)
		if info.Queue != queue.AIProcessing || info.State != queue.Pending {
			t.Errorf("List: job %s in queue %q, %s; want %q, pending", info.ID, info.Queue, info.State, queue.AIProcessing)
		}
	}
	if want := []string{jobs[n-1].ID, jobs[n-2].ID, jobs[n-3].ID}; !slices.Equal(got, want) {
		t.Errorf("List(pending, 3) = %v, want the newest %v", got, want)
	}
	last := jobs[n-1]
	if info := get(t, api, last.ID); info.Queue != queue.AIProcessing || info.State != queue.Pending {
		t.Errorf("Get: queue %q, %s; want %q, pending", info.Queue, info.State, queue.AIProcessing)
	}
	if err := api.Delete(t.Context(), jobs[n-2].ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, err = api.Get(t.Context(), jobs[n-2].ID)
	wantErrIs(t, "Get after Delete", err, queue.ErrNotFound)

	// The last job dies on its first run; replayed, it completes. It waits
	// behind the whole batch, so the worker runs many at once: at the
	// suite's default of 4, a loaded machine under -race took over the
	// suite's wait to work through 300 instant jobs.
	var runs atomic.Int32
	worker := s.open(t, storage, Config{Concurrency: 32, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		if job.ID == last.ID && runs.Add(1) == 1 {
			return queue.Permanent(errors.New("undecodable image"))
		}
		return nil
	})})
	if err := worker.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitState(t, api, last.ID, queue.Dead)
	if err := api.Retry(t.Context(), last.ID); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	waitState(t, api, last.ID, queue.Completed)
	eventually(t, "every job completed", func() bool { return counts(t, api)[queue.Completed] == n-1 })
	if c := counts(t, api); c[queue.Dead]+c[queue.Pending]+c[queue.Retrying]+c[queue.Active] != 0 {
		t.Errorf("Counts = %v, want %d completed and nothing else", c, n-1)
	}
}
