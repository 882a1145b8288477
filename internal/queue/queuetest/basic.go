package queuetest

import (
	"context"
	"encoding/json"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// runsOnceAndCompletes: one job, one handler call, then completed and kept
// countable.
func (s suite) runsOnceAndCompletes(t *testing.T) {
	var calls atomic.Int32
	ran := make(chan struct{}, 1)
	b, _ := s.started(t, Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		calls.Add(1)
		ran <- struct{}{}
		return nil
	})})
	job := newJob(t)
	enqueue(t, b, job)
	recv(t, ran, "the handler")
	info := waitState(t, b, job.ID, queue.Completed)
	if info.Attempt != 1 || info.FinishedAt == nil || len(info.Errors) != 0 {
		t.Errorf("completed job: Attempt=%d FinishedAt=%v Errors=%q; want 1, set, none", info.Attempt, info.FinishedAt, info.Errors)
	}
	if c := counts(t, b); c[queue.Completed] != 1 || c[queue.Pending]+c[queue.Active]+c[queue.Retrying]+c[queue.Dead] != 0 {
		t.Errorf("Counts = %v, want one completed and nothing else", c)
	}
	if err := stop(t, b, wait); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

// roundTrips: what the enqueuer gives is what the handler and Get see.
func (s suite) roundTrips(t *testing.T) {
	policy := fastPolicy(2)
	got := make(chan queue.Job, 2)
	storage := s.f.NewStorage(t)
	b := s.open(t, storage, Config{Policy: policy, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		got <- *job
		return nil
	})})

	job := newJob(t)
	job.Payload = json.RawMessage(`{ "assetId": "01J0000000000000000000000A", "size": 123456, "ratio": 0.75,
		"tags": ["a", "ü", "\u00e9"], "nested": {"k": null, "t": true} }`)
	job.EnqueuedAt = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC)
	job.Group = "01J0000000000000000000000U:ü"
	stamped := newJob(t) // EnqueuedAt left zero: the backend stamps it
	before := time.Now()
	enqueue(t, b, job, stamped)
	after := time.Now()

	info := get(t, b, job.ID)
	if info.ID != job.ID || info.Queue != job.Queue || info.State != queue.Pending || info.Attempt != 0 ||
		info.MaxAttempts != policy.MaxAttempts() || !info.EnqueuedAt.Equal(job.EnqueuedAt) || info.FinishedAt != nil {
		t.Errorf("Get before start = %+v; want ID %s, queue %s, pending, attempt 0, max %d, enqueued %v, not finished",
			info, job.ID, job.Queue, policy.MaxAttempts(), job.EnqueuedAt)
	}
	if !jsonEqual(info.Payload, job.Payload) {
		t.Errorf("Get payload = %s, want the JSON value %s", info.Payload, job.Payload)
	}
	if st := get(t, b, stamped.ID).EnqueuedAt; st.Before(before.Add(-time.Second)) || st.After(after.Add(time.Second)) {
		t.Errorf("zero EnqueuedAt became %v, want the time of Enqueue (%v..%v)", st, before, after)
	}

	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	seen := map[string]queue.Job{}
	for range 2 {
		j := recv(t, got, "the handler")
		seen[j.ID] = j
	}
	h, ok := seen[job.ID]
	if !ok {
		t.Fatalf("handler never saw job %s; saw %v", job.ID, seen)
	}
	if h.Queue != job.Queue || h.Group != job.Group || h.Attempt != 1 || h.MaxAttempts != policy.MaxAttempts() || !h.EnqueuedAt.Equal(job.EnqueuedAt) {
		t.Errorf("handler got %+v; want queue %s, group %q, attempt 1, max %d, enqueued %v", h, job.Queue, job.Group, policy.MaxAttempts(), job.EnqueuedAt)
	}
	if !jsonEqual(h.Payload, job.Payload) {
		t.Errorf("handler payload = %s, want the JSON value %s", h.Payload, job.Payload)
	}
}

// enqueueOnly: a backend without a handler stores jobs and runs none; a
// worker over the same storage runs them.
func (s suite) enqueueOnly(t *testing.T) {
	storage := s.f.NewStorage(t)
	api := s.open(t, storage, Config{})
	if err := api.Start(t.Context()); err != nil {
		t.Fatalf("Start of an enqueue-only backend: %v", err)
	}
	job := newJob(t)
	enqueue(t, api, job)
	if c := counts(t, api); c[queue.Pending] != 1 {
		t.Errorf("Counts = %v, want one pending", c)
	}

	ran := make(chan string, 1)
	worker := s.open(t, storage, Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- job.ID
		return nil
	})})
	if err := worker.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if id := recv(t, ran, "the worker to run the job"); id != job.ID {
		t.Errorf("worker ran %s, want %s", id, job.ID)
	}
	waitState(t, api, job.ID, queue.Completed)
}

// rejectsDuplicates: a batch with a known ID or an invalid job stores
// nothing.
func (s suite) rejectsDuplicates(t *testing.T) {
	b := s.open(t, s.f.NewStorage(t), Config{})
	first := newJob(t)
	enqueue(t, b, first)

	other, again := newJob(t), first
	again.Payload = json.RawMessage(`{"changed":true}`)
	wantErrIs(t, "Enqueue of an existing ID", b.Enqueue(t.Context(), other, again), queue.ErrDuplicate)
	if _, err := b.Get(t.Context(), other.ID); err == nil {
		t.Errorf("the batch with a duplicate was partly stored: %s exists", other.ID)
	}
	if info := get(t, b, first.ID); !jsonEqual(info.Payload, first.Payload) {
		t.Errorf("the duplicate overwrote the original payload: %s", info.Payload)
	}

	for name, bad := range map[string]queue.Job{
		"no ID":           {Queue: queue.AIProcessing, Payload: json.RawMessage(`{}`)},
		"no queue":        {ID: newJob(t).ID, Payload: json.RawMessage(`{}`)},
		"invalid payload": {ID: newJob(t).ID, Queue: queue.AIProcessing, Payload: json.RawMessage(`{"a":`)},
	} {
		ok := newJob(t)
		if err := b.Enqueue(t.Context(), ok, bad); err == nil {
			t.Errorf("Enqueue of a job with %s succeeded", name)
		}
		if _, err := b.Get(t.Context(), ok.ID); err == nil {
			t.Errorf("job with %s: the valid job of its batch was stored", name)
		}
	}
	if c := counts(t, b); c[queue.Pending] != 1 {
		t.Errorf("Counts = %v, want only the first job pending", c)
	}
}

// listsNewestFirst: List orders by enqueue, newest first, and honours limit.
func (s suite) listsNewestFirst(t *testing.T) {
	b := s.open(t, s.f.NewStorage(t), Config{})
	var ids []string
	for range 3 {
		j := newJob(t)
		enqueue(t, b, j)
		ids = append(ids, j.ID)
	}
	slices.Reverse(ids)
	list, err := b.List(t.Context(), queue.Pending, 2)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if got := infoIDs(list); !slices.Equal(got, ids[:2]) {
		t.Errorf("List(pending, 2) = %v, want %v", got, ids[:2])
	}
	all, err := b.List(t.Context(), queue.Pending, 0)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if got := infoIDs(all); !slices.Equal(got, ids) {
		t.Errorf("List(pending, 0) = %v, want %v", got, ids)
	}
	for _, st := range []queue.State{queue.Active, queue.Retrying, queue.Completed, queue.Dead} {
		l, err := b.List(t.Context(), st, 10)
		if err != nil || len(l) != 0 {
			t.Errorf("List(%s) = %v, %v; want empty", st, infoIDs(l), err)
		}
	}
}

func infoIDs(infos []queue.Info) []string {
	ids := make([]string, len(infos))
	for i, in := range infos {
		ids[i] = in.ID
	}
	return ids
}
