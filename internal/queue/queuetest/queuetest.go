// Package queuetest is the conformance suite for queue.Backend: every backend
// runs TestBackend from its own tests, so that the embedded and the
// scale-out deployments keep the same promises (DESIGN §6.4).
package queuetest

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/queue"
)

// Config is what the suite asks of each backend it opens.
type Config struct {
	Handler     queue.Handler // nil: an enqueue-only backend
	Policy      queue.Policy  // always set, with millisecond backoffs
	Concurrency int           // always set
}

// Factory opens backends for the suite.
type Factory struct {
	// NewStorage returns the name of fresh, empty storage for one test: a
	// file path, a key prefix. Cleanup is the factory's (t.Cleanup).
	NewStorage func(t *testing.T) string
	// Open returns a new backend over the named storage, configured as cfg
	// says. Opening the same name again gives another backend over the same
	// jobs, as a restarted process, or a second process, would have. The
	// suite calls Stop on every backend it opens; anything else to release
	// is Open's to register with t.Cleanup. Open must also work in a child
	// process: the crash test runs the test binary again to kill a worker
	// for real. A backend that needs the knowledge that it is the only
	// worker on the storage to redeliver fast (riverqueue's RecoverOnStart)
	// should be told so by Open: the suite never runs two workers on one
	// storage at once, except a killed one and its successor.
	Open func(t *testing.T, storage string, cfg Config) queue.Backend
}

// wait bounds every wait in the suite; a conforming backend finishes each
// step well within it.
const wait = 20 * time.Second

// timePrecision is the slack allowed when checking that a job did not run
// early: backends may store times to the millisecond.
const timePrecision = 2 * time.Millisecond

// TestBackend runs the conformance suite against the backends f opens.
func TestBackend(t *testing.T, f Factory) {
	if f.NewStorage == nil || f.Open == nil {
		t.Fatal("queuetest: Factory needs NewStorage and Open")
	}
	s := suite{f: f}
	for _, c := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"RunsOnceAndCompletes", s.runsOnceAndCompletes},
		{"RoundTripsIDAndPayload", s.roundTrips},
		{"EnqueueOnlyStoresWithoutRunning", s.enqueueOnly},
		{"RejectsDuplicateAndInvalidJobsWhole", s.rejectsDuplicates},
		{"ListsNewestFirstWithLimit", s.listsNewestFirst},
		{"RetriesWithBackoffThenSucceeds", s.retriesWithBackoff},
		{"PanicIsRetried", s.panicIsRetried},
		{"ExhaustedRetriesLeaveJobDead", s.exhaustedRetries},
		{"PermanentErrorIsDeadAtOnce", s.permanent},
		{"RetryAfterIsHonoured", s.retryAfter},
		{"SnoozeCountsNoAttempt", s.snoozeCountsNoAttempt},
		{"RetryReplaysDeadJob", s.retryReplays},
		{"Delete", s.delete},
		{"UnknownIDsAndWrongStates", s.sentinels},
		{"StopWaitsForRunningJob", s.stopWaits},
		{"StopCancelsAfterDeadline", s.stopCancels},
		{"ConcurrencyLimitHolds", s.concurrencyLimit},
		{"CrashedWorkerJobRunsAgain", s.crashRedelivery},
		{"ManyJobsWithFailuresNoneLostNoneTwice", s.manyJobs},
		{"FairnessOneJobOvertakesABatch", s.fairness},
		{"FairnessKeepsOrderWithinAGroup", s.groupOrder},
		{"AdminCallsWorkInEveryTier", s.adminInEveryTier},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !inCrashChild() {
				t.Parallel()
			}
			c.run(t)
		})
	}
}

type suite struct{ f Factory }

// open opens a backend and stops it when the test ends.
func (s suite) open(t *testing.T, storage string, cfg Config) queue.Backend {
	t.Helper()
	if cfg.Policy == (queue.Policy{}) {
		cfg.Policy = fastPolicy(3)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 4
	}
	b := s.f.Open(t, storage, cfg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := b.Stop(ctx); err != nil {
			t.Errorf("Stop at cleanup: %v", err)
		}
	})
	return b
}

// started opens a backend over fresh storage and starts it.
func (s suite) started(t *testing.T, cfg Config) (queue.Backend, string) {
	t.Helper()
	storage := s.f.NewStorage(t)
	b := s.open(t, storage, cfg)
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return b, storage
}

func fastPolicy(retries int) queue.Policy {
	return queue.Policy{Retries: retries, Backoff: 5 * time.Millisecond}
}

// newJob makes a job with a fresh ULID and a small payload naming the test.
func newJob(t *testing.T) queue.Job {
	id := ulid.Make().String()
	payload, _ := json.Marshal(map[string]any{"test": t.Name(), "jobId": id, "n": []any{1, 2.5, "ü"}})
	return queue.Job{ID: id, Queue: queue.AIProcessing, Payload: payload}
}

func enqueue(t *testing.T, b queue.Backend, jobs ...queue.Job) {
	t.Helper()
	if err := b.Enqueue(t.Context(), jobs...); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
}

func get(t *testing.T, b queue.Backend, id string) queue.Info {
	t.Helper()
	info, err := b.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return info
}

// eventually polls cond until it holds or the suite's wait passes. It is for
// state the backend records after a handler returned, which the handler
// cannot signal.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", wait, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitState waits until job id is in state and returns its Info.
func waitState(t *testing.T, b queue.Backend, id string, state queue.State) queue.Info {
	t.Helper()
	var info queue.Info
	eventually(t, "job "+id+" to be "+string(state), func() bool {
		var err error
		info, err = b.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("Get(%s): %v", id, err)
		}
		return info.State == state
	})
	return info
}

// recv waits for one value from ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("timed out after %v waiting for %s", wait, what)
		panic("unreachable")
	}
}

func stop(t *testing.T, b queue.Backend, d time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return b.Stop(ctx)
}

// jsonEqual compares JSON values, not bytes: a backend may re-encode.
func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func counts(t *testing.T, b queue.Backend) map[queue.State]int {
	t.Helper()
	c, err := b.Counts(t.Context())
	if err != nil {
		t.Fatalf("Counts: %v", err)
	}
	for _, s := range queue.States() {
		if _, ok := c[s]; !ok {
			t.Errorf("Counts has no key for %q (want every state, zero included)", s)
		}
	}
	return c
}

func wantErrIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: err = %v, want errors.Is(err, %v)", what, err, target)
	}
}
