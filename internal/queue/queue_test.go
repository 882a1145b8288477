package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

func TestPolicyDelayDoublesWithinJitter(t *testing.T) {
	t.Parallel()
	p := queue.Policy{Retries: 3, Backoff: 2 * time.Second}
	for attempt, nominal := range map[int]time.Duration{1: 2 * time.Second, 2: 4 * time.Second, 3: 8 * time.Second} {
		lo := time.Duration(float64(nominal) * (1 - queue.Jitter))
		hi := time.Duration(float64(nominal) * (1 + queue.Jitter))
		seen := map[time.Duration]bool{}
		for range 200 {
			d := p.Delay(attempt)
			if d < lo || d > hi {
				t.Fatalf("Delay(%d) = %v, want within [%v, %v]", attempt, d, lo, hi)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("Delay(%d) gave one value in 200 draws: no jitter", attempt)
		}
	}
	if got := p.Delay(1000); got > 24*time.Hour*12/10 || got <= 0 {
		t.Errorf("Delay(1000) = %v, want capped near 24h", got)
	}
}

func TestPolicyMaxAttemptsAndValidate(t *testing.T) {
	t.Parallel()
	if got := queue.DefaultPolicy().MaxAttempts(); got != 4 {
		t.Errorf("DefaultPolicy().MaxAttempts() = %d, want 4 (3 retries + the first attempt)", got)
	}
	for _, p := range []queue.Policy{{Retries: -1, Backoff: time.Second}, {Retries: 1}} {
		if p.Validate() == nil {
			t.Errorf("%+v.Validate() = nil, want an error", p)
		}
	}
	if err := (queue.Policy{Retries: 0, Backoff: time.Millisecond}).Validate(); err != nil {
		t.Errorf("no retries is valid, got %v", err)
	}
}

func TestErrorMarksSurviveWrapping(t *testing.T) {
	t.Parallel()
	base := errors.New("ai: 400")
	perm := fmt.Errorf("pipeline: %w", queue.Permanent(base))
	if !queue.IsPermanent(perm) || !errors.Is(perm, base) {
		t.Errorf("wrapped Permanent lost its mark or its cause")
	}
	if queue.IsPermanent(base) || queue.Permanent(nil) != nil || queue.RetryAfter(nil, time.Second) != nil {
		t.Errorf("unmarked or nil errors must stay so")
	}
	ra := fmt.Errorf("pipeline: %w", queue.RetryAfter(context.Canceled, 3*time.Second))
	if d, ok := queue.RetryDelay(ra); !ok || d != 3*time.Second {
		t.Errorf("RetryDelay = %v, %v; want 3s, true", d, ok)
	}
	if !errors.Is(ra, context.Canceled) {
		t.Errorf("RetryAfter must keep its cause visible to errors.Is")
	}
	if _, ok := queue.RetryDelay(base); ok {
		t.Errorf("RetryDelay of a plain error reported a delay")
	}
}

func TestJobValidate(t *testing.T) {
	t.Parallel()
	good := queue.Job{ID: "01J", Queue: queue.AIProcessing, Payload: json.RawMessage(`{"a":1}`)}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid job: %v", err)
	}
	for name, j := range map[string]queue.Job{
		"no id":        {Queue: "q", Payload: json.RawMessage(`1`)},
		"no queue":     {ID: "x", Payload: json.RawMessage(`1`)},
		"no payload":   {ID: "x", Queue: "q"},
		"invalid json": {ID: "x", Queue: "q", Payload: json.RawMessage(`{`)},
	} {
		if j.Validate() == nil {
			t.Errorf("%s: Validate() = nil", name)
		}
	}
}

func TestStates(t *testing.T) {
	t.Parallel()
	for _, s := range queue.States() {
		if !s.Valid() {
			t.Errorf("%q not Valid", s)
		}
	}
	if queue.State("discarded").Valid() {
		t.Errorf("a River state leaked into ours")
	}
}

func TestFairTierGrowsWithBacklog(t *testing.T) {
	t.Parallel()
	for backlog, want := range map[int]int{0: 1, queue.FairBurst - 1: 1, queue.FairBurst: 2, 8*queue.FairBurst - 1: 2,
		8 * queue.FairBurst: 3, 64*queue.FairBurst - 1: 3, 64 * queue.FairBurst: 4, 1 << 30: queue.FairTiers} {
		if got := queue.FairTier(backlog); got != want {
			t.Errorf("FairTier(%d) = %d, want %d", backlog, got, want)
		}
	}
}

func TestValidateBoundsGroup(t *testing.T) {
	t.Parallel()
	job := queue.Job{ID: "j", Queue: queue.AIProcessing, Payload: json.RawMessage(`{}`), Group: strings.Repeat("g", queue.MaxGroupLen)}
	if err := job.Validate(); err != nil {
		t.Errorf("a group of MaxGroupLen bytes: %v", err)
	}
	for _, g := range []string{strings.Repeat("g", queue.MaxGroupLen+1), "\xff"} {
		job.Group = g
		if job.Validate() == nil {
			t.Errorf("group %q: Validate = nil, want an error", g)
		}
	}
}

func TestSnoozeMarkSurvivesWrapping(t *testing.T) {
	t.Parallel()
	cause := errors.New("ai: breaker open")
	err := fmt.Errorf("pipeline: %w", queue.Snooze(cause, 3*time.Second))
	if d, ok := queue.SnoozeDelay(err); !ok || d != 3*time.Second || !errors.Is(err, cause) {
		t.Errorf("SnoozeDelay(wrapped) = %v, %v, cause kept %v; want 3s, true, true", d, ok, errors.Is(err, cause))
	}
	if queue.Snooze(nil, time.Second) == nil {
		t.Errorf("Snooze(nil, d) = nil: a handler would mark the job completed")
	}
	if d, ok := queue.SnoozeDelay(queue.Snooze(nil, -time.Second)); !ok || d != 0 {
		t.Errorf("a negative snooze = %v, %v; want 0, true", d, ok)
	}
	if _, ok := queue.SnoozeDelay(queue.RetryAfter(cause, time.Second)); ok {
		t.Errorf("RetryAfter is not a snooze")
	}
}
