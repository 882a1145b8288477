package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

func answer(status int, header map[string]string, body string) func(w http.ResponseWriter, r *http.Request, n int) {
	return func(w http.ResponseWriter, _ *http.Request, _ int) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}
}

const okResult = `{"label": "Charizard", "set": "Base", "confidence": 0.93}`

func TestProcessJobSuccessMakesDraftAndEvent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, answer(200, nil, okResult), envOptions{})
	a, job := e.newAsset()

	if err := e.h.ProcessJob(context.Background(), job); err != nil {
		t.Fatalf("ProcessJob: %v", err)
	}

	reqs := e.ai.requests()
	if len(reqs) != 1 {
		t.Fatalf("AI called %d times, want 1", len(reqs))
	}
	if r := reqs[0]; r.AssetID != a.ID || !bytes.Equal(r.Image, e.image) || r.Auth != "Bearer "+e.aiToken || r.FileType != "image/jpeg" {
		t.Errorf("AI request: assetId %q, %d image bytes (want %d), auth %q, part type %q",
			r.AssetID, len(r.Image), len(e.image), r.Auth, r.FileType)
	}
	got := e.store.get(t, a.ID)
	var compact bytes.Buffer
	json.Compact(&compact, []byte(okResult))
	if got.Status != asset.StatusDraft || !bytes.Equal(got.AIMetadata, compact.Bytes()) || got.Error != nil || got.Attempts != 1 {
		t.Errorf("asset after success: status %s, metadata %s, error %+v, attempts %d", got.Status, got.AIMetadata, got.Error, got.Attempts)
	}
	if got.EventID == "" || got.EventPending {
		t.Errorf("event id %q, still owed %v: want an id and the mark cleared after publishing", got.EventID, got.EventPending)
	}
	if !got.ProcessedAt.Equal(e.clock.Now().Truncate(time.Millisecond)) {
		t.Errorf("processedAt %v, want the handler's clock %v", got.ProcessedAt, e.clock.Now())
	}
	events := e.notes.delivered()
	if len(events) != 1 {
		t.Fatalf("%d events sent, want 1", len(events))
	}
	ev := checkEvent(t, events[0], got)
	if !bytes.Equal(ev.AIMetadata, compact.Bytes()) || ev.Error != nil {
		t.Errorf("event aiMetadata %s, error %+v", ev.AIMetadata, ev.Error)
	}
	if ev.ProcessedAt != "2026-11-29T01:02:03.456Z" {
		t.Errorf("event processedAt %q, want milliseconds in UTC", ev.ProcessedAt)
	}
	// Every store call is a round trip, and on FerretDB a collection
	// scan: a job's guarded updates do the checking, no read before them.
	e.store.mu.Lock()
	gets := e.store.gets
	e.store.mu.Unlock()
	if gets != 0 {
		t.Errorf("the job read the asset %d times; want only its guarded updates", gets)
	}
}

// TestProcessJobFailures runs each AI fault on a first attempt and on the
// last one: a retryable fault leaves the asset processing for the queue to
// retry, and fails it on the last attempt; a permanent one fails it at once.
func TestProcessJobFailures(t *testing.T) {
	t.Parallel()
	big := `{"blob":"` + strings.Repeat("x", ai.MaxResultBytes) + `"}`
	cases := []struct {
		name      string
		respond   func(w http.ResponseWriter, r *http.Request, n int)
		refused   bool          // the AI service's port is closed
		timeout   time.Duration // AI_TIMEOUT
		code      string
		permanent bool
		delay     time.Duration // the delay the queue must honour, 0 for its own backoff
	}{
		{name: "500", respond: answer(500, nil, `{"error":"boom"}`), code: ai.CodeUnavailable},
		{name: "503 with Retry-After", respond: answer(503, map[string]string{"Retry-After": "3"}, ""), code: ai.CodeUnavailable, delay: 3 * time.Second},
		{name: "429 with Retry-After", respond: answer(429, map[string]string{"Retry-After": "7"}, ""), code: ai.CodeRateLimited, delay: 7 * time.Second},
		{name: "429 without Retry-After", respond: answer(429, nil, ""), code: ai.CodeRateLimited},
		{name: "408", respond: answer(408, nil, ""), code: ai.CodeTimeout},
		{name: "timeout", respond: func(w http.ResponseWriter, r *http.Request, _ int) { <-r.Context().Done() },
			timeout: 250 * time.Millisecond, code: ai.CodeTimeout},
		{name: "invalid JSON", respond: answer(200, nil, `{"label": "Chari`), code: ai.CodeBadResponse, permanent: true},
		{name: "connection refused", refused: true, code: ai.CodeUnavailable},
		{name: "400", respond: answer(400, nil, `{"error":"not a card"}`), code: ai.CodeRejected, permanent: true},
		{name: "422", respond: answer(422, nil, ""), code: ai.CodeRejected, permanent: true},
		{name: "oversized JSON", respond: answer(200, nil, big), code: ai.CodeResponseTooLarge, permanent: true},
		{name: "JSON array", respond: answer(200, nil, `[1,2]`), code: ai.CodeBadResponse, permanent: true},
	}
	for _, c := range cases {
		for _, attempt := range []int{1, maxAttempts} {
			if c.permanent && attempt != 1 {
				continue
			}
			t.Run(fmt.Sprintf("%s/attempt %d of %d", c.name, attempt, maxAttempts), func(t *testing.T) {
				t.Parallel()
				o := envOptions{timeout: c.timeout}
				if c.refused {
					o.baseURL = refusedURL(t)
				}
				e := newEnv(t, c.respond, o)
				a, job := e.newAsset()
				job.Attempt = attempt

				err := e.h.ProcessJob(context.Background(), job)
				if err == nil {
					t.Fatal("ProcessJob returned nil; want the AI's error")
				}
				if queue.IsPermanent(err) != c.permanent {
					t.Errorf("queue.IsPermanent(%v) = %v, want %v", err, !c.permanent, c.permanent)
				}
				if d, ok := queue.RetryDelay(err); attempt < maxAttempts && (ok != (c.delay > 0) || d != c.delay) {
					t.Errorf("queue.RetryDelay(%v) = %v, %v; want %v", err, d, ok, c.delay)
				}
				if ai.Code(err) != c.code {
					t.Errorf("error code %q, want %q (err %v)", ai.Code(err), c.code, err)
				}
				if !c.refused && e.ai.calls() != 1 {
					t.Errorf("AI called %d times, want 1", e.ai.calls())
				}

				got := e.store.get(t, a.ID)
				if got.Attempts != attempt {
					t.Errorf("attempts %d, want %d", got.Attempts, attempt)
				}
				if !c.permanent && attempt < maxAttempts {
					if got.Status != asset.StatusProcessing || got.EventPending || len(e.notes.attempts()) != 0 {
						t.Errorf("a retryable failure before the last attempt: status %s, event owed %v, %d events; want processing and none",
							got.Status, got.EventPending, len(e.notes.attempts()))
					}
					return
				}
				if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != c.code || got.AIMetadata != nil || got.EventPending {
					t.Fatalf("asset: status %s, error %+v, metadata %s, event owed %v; want failed with %s and the event out",
						got.Status, got.Error, got.AIMetadata, got.EventPending, c.code)
				}
				if got.Error.Message == "" || strings.Contains(got.Error.Message, e.aiToken) || strings.Contains(got.Error.Message, "127.0.0.1") {
					t.Errorf("error message %q: want a message without the token or internal addresses", got.Error.Message)
				}
				events := e.notes.delivered()
				if len(events) != 1 {
					t.Fatalf("%d events, want 1", len(events))
				}
				ev := checkEvent(t, events[0], got)
				if ev.Error == nil || ev.Error.Code != c.code || string(ev.AIMetadata) != "null" {
					t.Errorf("event error %+v, aiMetadata %s", ev.Error, ev.AIMetadata)
				}
			})
		}
	}
}

func TestProcessJobRetriesThenSucceeds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 1 {
			answer(502, nil, "bad gateway")(w, r, n)
			return
		}
		answer(200, nil, okResult)(w, r, n)
	}, envOptions{})
	a, job := e.newAsset()

	if err := e.h.ProcessJob(context.Background(), job); err == nil || queue.IsPermanent(err) {
		t.Fatalf("first attempt: %v, want a retryable error", err)
	}
	if len(e.notes.attempts()) != 0 {
		t.Fatal("an event was sent after a retryable failure")
	}
	job.Attempt = 2
	if err := e.h.ProcessJob(context.Background(), job); err != nil {
		t.Fatalf("second attempt: %v", err)
	}
	got := e.store.get(t, a.ID)
	if got.Status != asset.StatusDraft || got.Attempts != 2 || got.Error != nil || e.ai.calls() != 2 {
		t.Fatalf("asset %s attempts %d error %+v after %d AI calls; want draft after 2", got.Status, got.Attempts, got.Error, e.ai.calls())
	}
	events := e.notes.delivered()
	if len(events) != 1 {
		t.Fatalf("%d events, want 1", len(events))
	}
	if ev := checkEvent(t, events[0], got); ev.Attempts != 2 {
		t.Errorf("event attempts %d, want 2", ev.Attempts)
	}
}

// A repeat delivery is acknowledged without calling the AI or sending
// anything: the asset is final, processing under a newer job, or gone.
func TestProcessJobRepeatDeliveryDoesNoWork(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		change func(e *env, a *asset.Asset)
	}{
		{"already draft", func(e *env, a *asset.Asset) {
			a.Status, a.AIMetadata, a.EventID = asset.StatusDraft, json.RawMessage(`{"x":1}`), ulid.Make().String()
			e.store.put(a)
		}},
		{"already failed", func(e *env, a *asset.Asset) {
			a.Status, a.Error, a.EventID = asset.StatusFailed, &asset.Error{Code: "ai_rejected", Message: "no"}, ulid.Make().String()
			e.store.put(a)
		}},
		{"processing under a newer job", func(e *env, a *asset.Asset) {
			a.ProcessingJobID = ulid.Make().String()
			e.store.put(a)
		}},
		{"asset gone", func(e *env, a *asset.Asset) {
			e.store.mu.Lock()
			delete(e.store.assets, a.ID)
			e.store.mu.Unlock()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, answer(200, nil, okResult), envOptions{})
			a, job := e.newAsset()
			c.change(e, a)
			job.Attempt = 2
			if err := e.h.ProcessJob(context.Background(), job); err != nil {
				t.Fatalf("ProcessJob: %v, want nil (acknowledged)", err)
			}
			if n := e.ai.calls(); n != 0 {
				t.Errorf("AI called %d times for a repeat delivery", n)
			}
			if n := len(e.notes.attempts()); n != 0 {
				t.Errorf("%d events sent for a repeat delivery", n)
			}
		})
	}

	t.Run("after its own success", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, answer(200, nil, okResult), envOptions{})
		a, job := e.newAsset()
		if err := e.h.ProcessJob(context.Background(), job); err != nil {
			t.Fatal(err)
		}
		before := e.store.get(t, a.ID)
		if err := e.h.ProcessJob(context.Background(), job); err != nil {
			t.Fatalf("repeat: %v", err)
		}
		after := e.store.get(t, a.ID)
		if e.ai.calls() != 1 || len(e.notes.attempts()) != 1 || after.EventID != before.EventID || after.Attempts != 1 {
			t.Errorf("repeat did work: %d AI calls, %d events, event id %s → %s, attempts %d",
				e.ai.calls(), len(e.notes.attempts()), before.EventID, after.EventID, after.Attempts)
		}
	})
}

// Two deliveries of one job running at once (at-least-once delivery): both
// may call the AI, but exactly one final state is recorded and one event sent.
// The fake AI holds each call until both are in it, so the test proves the
// deliveries overlapped: if either never reaches the AI while the other is
// there (one serialised behind the other, or acknowledged early), it fails.
func TestProcessJobConcurrentDuplicatesFinishOnce(t *testing.T) {
	t.Parallel()
	both := make(chan struct{})
	var (
		mu       sync.Mutex
		inFlight int
		overlap  bool
	)
	e := newEnv(t, func(w http.ResponseWriter, r *http.Request, n int) {
		mu.Lock()
		inFlight++
		if inFlight == 2 {
			overlap = true
			close(both)
		}
		mu.Unlock()
		select {
		case <-both:
		case <-time.After(5 * time.Second): // the other delivery never joined this one
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		answer(200, nil, fmt.Sprintf(`{"call":%d}`, n))(w, r, n)
	}, envOptions{})
	a, job := e.newAsset()

	errs := make(chan error, 2)
	for range 2 {
		j := *job
		go func() { errs <- e.h.ProcessJob(context.Background(), &j) }()
	}
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("ProcessJob: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("ProcessJob did not return")
		}
	}
	mu.Lock()
	overlapped := overlap
	mu.Unlock()
	if !overlapped || e.ai.calls() != 2 {
		t.Fatalf("the two deliveries did not run at once (%d AI calls, overlap %v): the test proves nothing", e.ai.calls(), overlapped)
	}
	got := e.store.get(t, a.ID)
	events := e.notes.delivered()
	if got.Status != asset.StatusDraft || len(events) != 1 {
		t.Fatalf("status %s, %d events; want draft and exactly 1 event", got.Status, len(events))
	}
	if ev := checkEvent(t, events[0], got); !bytes.Equal(ev.AIMetadata, got.AIMetadata) {
		t.Errorf("event metadata %s, asset metadata %s: the event must announce the recorded state", ev.AIMetadata, got.AIMetadata)
	}
}

func TestProcessJobPermanentWithoutAI(t *testing.T) {
	t.Parallel()
	t.Run("blob missing", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, answer(200, nil, okResult), envOptions{})
		a, job := e.newAsset()
		if err := e.blobs.Delete(context.Background(), a.BlobKey); err != nil {
			t.Fatal(err)
		}
		err := e.h.ProcessJob(context.Background(), job)
		if !queue.IsPermanent(err) {
			t.Fatalf("ProcessJob: %v, want a permanent error", err)
		}
		got := e.store.get(t, a.ID)
		if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != ai.CodeImageUnreadable || e.ai.calls() != 0 {
			t.Fatalf("asset %s error %+v, %d AI calls", got.Status, got.Error, e.ai.calls())
		}
		if events := e.notes.delivered(); len(events) != 1 {
			t.Fatalf("%d events, want 1", len(events))
		} else {
			checkEvent(t, events[0], got)
		}
	})
	t.Run("undecodable payload", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, answer(200, nil, okResult), envOptions{})
		for _, p := range []string{`"just a string"`, `{"assetId":"x"}`} {
			job := &queue.Job{ID: ulid.Make().String(), Queue: queue.AIProcessing, Payload: json.RawMessage(p), Attempt: 1, MaxAttempts: maxAttempts}
			if err := e.h.ProcessJob(context.Background(), job); !queue.IsPermanent(err) {
				t.Errorf("payload %s: %v, want a permanent error", p, err)
			}
		}
		if e.ai.calls() != 0 || len(e.notes.attempts()) != 0 {
			t.Errorf("%d AI calls, %d events for undecodable jobs", e.ai.calls(), len(e.notes.attempts()))
		}
	})
}

// A failed publish leaves the event owed; Relay sends it later with the
// same eventId, once it is older than minAge, and then no more.
// A store that records the event with the final state (the embedded one,
// whose event log is in the same transaction) has the event published on
// Bus alone: no second append through Notifier, no EventSent. A Bus that
// fails leaves nothing owed (the log has the event for reconnecting
// devices), and an event still owed (a relay's) goes through Notifier.
func TestEventLoggedWithTheStateGoesOnTheBus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, answer(200, nil, okResult), envOptions{})
	e.store.logsEvents = true
	bus := &notifier{}
	e.h.Bus = bus
	a, job := e.newAsset()
	if err := e.h.ProcessJob(context.Background(), job); err != nil {
		t.Fatalf("ProcessJob: %v", err)
	}
	got := e.store.get(t, a.ID)
	if got.Status != asset.StatusDraft || got.EventPending {
		t.Fatalf("asset: status %s, event owed %v; want draft, nothing owed", got.Status, got.EventPending)
	}
	if on := bus.delivered(); len(on) != 1 {
		t.Fatalf("%d events on the bus, want 1", len(on))
	} else {
		checkEvent(t, on[0], got)
	}
	e.store.mu.Lock()
	marks := e.store.marks
	e.store.mu.Unlock()
	if n := len(e.notes.attempts()); n != 0 || marks != 0 {
		t.Errorf("Notifier got %d events and EventSent %d calls; want none (the store logged and marked the event)", n, marks)
	}

	bus.setFail(errors.New("bus down"))
	b, job := e.newAsset()
	if err := e.h.ProcessJob(context.Background(), job); err != nil {
		t.Fatalf("ProcessJob with the bus down: %v (the outcome and its event are recorded)", err)
	}
	if got := e.store.get(t, b.ID); got.Status != asset.StatusDraft || got.EventPending {
		t.Errorf("with the bus down: status %s, owed %v; want draft, nothing owed", got.Status, got.EventPending)
	}

	// An event still owed (FinishTx's, or one an earlier version left) is
	// the relay's, through Notifier, which appends it to the log.
	c, _ := e.newAsset()
	e.store.mu.Lock()
	owed, at := e.store.assets[c.ID], e.clock.Now()
	owed.Status, owed.Error = asset.StatusFailed, &asset.Error{Code: "job_deleted", Message: "the job was deleted"}
	owed.ProcessedAt, owed.EventID, owed.EventPending = &at, ulid.Make().String(), true
	e.store.mu.Unlock()
	e.clock.Add(time.Hour)
	if n, err := e.h.Relay(context.Background(), time.Minute); err != nil || n != 1 {
		t.Fatalf("Relay = %d, %v; want 1", n, err)
	}
	if n := len(e.notes.delivered()); n != 1 || len(bus.attempts()) != 2 {
		t.Errorf("Notifier delivered %d events and the bus was tried %d times; want the relayed event through Notifier only", n, len(bus.attempts()))
	}
	if e.store.get(t, c.ID).EventPending {
		t.Error("the relayed event is still owed")
	}
}

func TestNotifierFailureLeavesEventForRelay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, answer(200, nil, okResult), envOptions{})
	a, job := e.newAsset()
	e.notes.setFail(errors.New("event bus down"))

	if err := e.h.ProcessJob(context.Background(), job); err != nil {
		t.Fatalf("ProcessJob: %v (the outcome is recorded; a publish failure must not fail the job)", err)
	}
	got := e.store.get(t, a.ID)
	if got.Status != asset.StatusDraft || !got.EventPending || got.EventID == "" {
		t.Fatalf("after a failed publish: status %s, event owed %v, id %q; want draft with the event owed", got.Status, got.EventPending, got.EventID)
	}
	first := e.notes.attempts()
	if len(first) != 1 {
		t.Fatalf("%d publish attempts, want 1", len(first))
	}

	ctx := context.Background()
	if _, err := e.h.Relay(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := len(e.notes.attempts()); n != 1 {
		t.Fatalf("Relay published an event younger than minAge (%d attempts)", n)
	}

	e.clock.Add(2 * time.Minute)
	if _, err := e.h.Relay(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := len(e.notes.attempts()); n != 2 || !e.store.get(t, a.ID).EventPending {
		t.Fatalf("relay while the notifier still fails: %d attempts, owed %v; want 2 and still owed", n, e.store.get(t, a.ID).EventPending)
	}

	e.notes.setFail(nil)
	n, err := e.h.Relay(ctx, time.Minute)
	if err != nil || n != 1 {
		t.Fatalf("Relay = %d, %v; want 1", n, err)
	}
	events := e.notes.delivered()
	if len(events) != 1 {
		t.Fatalf("%d events delivered, want 1", len(events))
	}
	if ev := checkEvent(t, events[0], got); ev.EventID != got.EventID || !bytes.Equal(events[0].Data, first[0].Data) {
		t.Errorf("relayed event differs from the one first attempted:\n%s\n%s", events[0].Data, first[0].Data)
	}
	if e.store.get(t, a.ID).EventPending {
		t.Error("event still owed after the relay sent it")
	}
	if n, err := e.h.Relay(ctx, 0); err != nil || n != 0 || len(e.notes.attempts()) != 3 {
		t.Errorf("second Relay = %d, %v after %d attempts; want nothing more sent", n, err, len(e.notes.attempts()))
	}
	if e.ai.calls() != 1 {
		t.Errorf("AI called %d times", e.ai.calls())
	}
}

func TestReconcileFailsAssetsOfDeadJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, answer(200, nil, okResult), envOptions{})
	info := func(job *queue.Job, state queue.State, errs ...string) queue.Info {
		return queue.Info{ID: job.ID, Queue: job.Queue, State: state, Attempt: maxAttempts, MaxAttempts: maxAttempts,
			Payload: job.Payload, Errors: errs}
	}

	// The worker was killed during the last attempt: the job is dead, the asset processing.
	orphan, orphanJob := e.newAsset()
	e.store.RecordAttempt(context.Background(), orphan.ID, orphanJob.ID, maxAttempts, e.clock.Now())
	// Dead after the handler failed the asset itself.
	failed, failedJob := e.newAsset()
	failed.Status, failed.Error, failed.EventID = asset.StatusFailed, &asset.Error{Code: "ai_rejected", Message: "no"}, ulid.Make().String()
	e.store.put(failed)
	// Dead, but the asset was retried since under a new job.
	moved, movedJob := e.newAsset()
	moved.ProcessingJobID = ulid.Make().String()
	e.store.put(moved)
	// Processing under a job that is still retrying.
	live, liveJob := e.newAsset()
	// Dead with an asset that is gone, and with a broken payload.
	gone, goneJob := e.newAsset()
	e.store.mu.Lock()
	delete(e.store.assets, gone.ID)
	e.store.mu.Unlock()
	broken := queue.Info{ID: ulid.Make().String(), Queue: queue.AIProcessing, State: queue.Dead, Attempt: 1, MaxAttempts: maxAttempts, Payload: json.RawMessage(`{}`)}

	jobs := &deadJobs{infos: []queue.Info{
		info(orphanJob, queue.Dead, "ai_unavailable", "worker stopped during the attempt (process ended); recovered at start-up"),
		info(failedJob, queue.Dead, "rejected"),
		info(movedJob, queue.Dead),
		info(liveJob, queue.Retrying, "boom"),
		info(goneJob, queue.Dead),
		broken,
	}}
	n, err := e.h.Reconcile(context.Background(), jobs)
	if err != nil || n != 1 {
		t.Fatalf("Reconcile = %d, %v; want 1", n, err)
	}
	got := e.store.get(t, orphan.ID)
	if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != "job_dead" ||
		got.Error.Message != "the analysis did not finish after 4 attempts" || got.Attempts != maxAttempts || got.EventPending {
		t.Fatalf("orphaned asset: %s %+v attempts %d owed %v", got.Status, got.Error, got.Attempts, got.EventPending)
	}
	events := e.notes.delivered()
	if len(events) != 1 {
		t.Fatalf("%d events, want 1 (for the orphaned asset only)", len(events))
	}
	checkEvent(t, events[0], got)
	if s := e.store.get(t, failed.ID); s.Status != asset.StatusFailed || s.Error.Code != "ai_rejected" || s.EventID != failed.EventID {
		t.Errorf("Reconcile rewrote an asset its job had already failed: %+v", s)
	}
	if s := e.store.get(t, moved.ID); s.Status != asset.StatusProcessing || s.ProcessingJobID != moved.ProcessingJobID {
		t.Errorf("Reconcile touched an asset now processing under a newer job: %+v", s)
	}
	if s := e.store.get(t, live.ID); s.Status != asset.StatusProcessing {
		t.Errorf("Reconcile failed the asset of a job that is not dead: %s", s.Status)
	}

	if n, err := e.h.Reconcile(context.Background(), jobs); err != nil || n != 0 || len(e.notes.attempts()) != 1 {
		t.Errorf("second Reconcile = %d, %v, %d events; want nothing more", n, err, len(e.notes.attempts()))
	}
	if _, err := e.h.Reconcile(context.Background(), &deadJobs{err: errors.New("queue down")}); err == nil {
		t.Error("Reconcile hid the queue's error")
	}
	if e.ai.calls() != 0 {
		t.Errorf("Reconcile called the AI %d times", e.ai.calls())
	}
}

// Cancelling the job's ctx (shutdown) during the AI call returns promptly
// with an error the queue treats as an interruption, and leaves the asset
// processing with no event, to be run again.
func TestProcessJobCancelledMidAnalysis(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	e := newEnv(t, func(w http.ResponseWriter, r *http.Request, n int) {
		close(arrived)
		<-r.Context().Done()
	}, envOptions{})
	a, job := e.newAsset()
	job.Attempt = maxAttempts // even on the last attempt, an interruption is not a failure

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.h.ProcessJob(ctx, job) }()
	<-arrived
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ProcessJob did not return after its ctx was cancelled")
	}
	if !errors.Is(err, context.Canceled) || queue.IsPermanent(err) {
		t.Fatalf("ProcessJob = %v; want an error wrapping context.Canceled, not permanent", err)
	}
	got := e.store.get(t, a.ID)
	if got.Status != asset.StatusProcessing || got.EventPending || len(e.notes.attempts()) != 0 {
		t.Fatalf("after cancellation: status %s, owed %v, %d events; want processing and no event", got.Status, got.EventPending, len(e.notes.attempts()))
	}
}

// analyzerFunc is an ai.Analyzer that is a function.
type analyzerFunc func(ctx context.Context, img ai.Image) (json.RawMessage, error)

func (f analyzerFunc) Analyze(ctx context.Context, img ai.Image) (json.RawMessage, error) {
	io.Copy(io.Discard, img.Body)
	return f(ctx, img)
}

// A 200 from the AI service that no store or client should hold fails the
// asset at once, before the store is touched: one AI call, no retry, the
// event valid UTF-8 JSON. On main these were drafts (invalid UTF-8, an error
// envelope) or, for the deep object, a CHECK failure in SQLite's Finish that
// was retried, calling the AI on every attempt, until the job died.
func TestProcessJobBadAIResultsFailAtOnce(t *testing.T) {
	t.Parallel()
	deep := strings.Repeat(`{"a":`, 1499) + "{}" + strings.Repeat("}", 1499)
	for name, body := range map[string]string{
		"invalid UTF-8":  "{\"label\":\"Pok\xe9mon\"}",
		"1500-deep":      deep,
		"error envelope": `{"error":{"message":"model overloaded"}}`,
		"status failed":  `{"status":"failed","label":null}`,
		"NUL":            `{"label":"a\u0000b"}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, answer(200, nil, body), envOptions{})
			a, job := e.newAsset()
			err := e.h.ProcessJob(context.Background(), job)
			if !queue.IsPermanent(err) || ai.Code(err) != ai.CodeBadResponse {
				t.Fatalf("ProcessJob = %v (code %q); want a permanent %s", err, ai.Code(err), ai.CodeBadResponse)
			}
			if e.ai.calls() != 1 {
				t.Errorf("AI called %d times, want 1", e.ai.calls())
			}
			got := e.store.get(t, a.ID)
			if got.Status != asset.StatusFailed || got.AIMetadata != nil || got.Error == nil || got.Error.Code != ai.CodeBadResponse {
				t.Fatalf("asset: status %s, metadata %q, error %+v; want failed with %s", got.Status, got.AIMetadata, got.Error, ai.CodeBadResponse)
			}
			checkUserMessage(t, got.Error.Message)
			events := e.notes.delivered()
			if len(events) != 1 {
				t.Fatalf("%d events, want 1", len(events))
			}
			if !utf8.Valid(events[0].Data) {
				t.Errorf("event is not valid UTF-8: %q", events[0].Data)
			}
			checkEvent(t, events[0], got)
		})
	}
}

// The pipeline does not take an Analyzer's word that its result is a valid
// object: the built-in analyzer or a future one gets the same check as the
// AI service, and what is stored is the re-encoded, validated form.
func TestProcessJobValidatesEveryAnalyzersResult(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, result, want string }{
		{"invalid UTF-8", "{\"a\":\"\xff\"}", ""},
		{"not an object", `[1]`, ""},
		{"too deep", strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40), ""},
		{"valid, re-encoded", "{ \"a\" : \"\\u00e9\" }", `{"a":"é"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, answer(500, nil, ""), envOptions{})
			e.h.Analyzer = analyzerFunc(func(context.Context, ai.Image) (json.RawMessage, error) {
				return json.RawMessage(tc.result), nil
			})
			a, job := e.newAsset()
			err := e.h.ProcessJob(context.Background(), job)
			got := e.store.get(t, a.ID)
			if tc.want != "" {
				if err != nil || got.Status != asset.StatusDraft || string(got.AIMetadata) != tc.want {
					t.Fatalf("ProcessJob = %v; asset %s with %q; want draft with %q", err, got.Status, got.AIMetadata, tc.want)
				}
				return
			}
			if !queue.IsPermanent(err) || got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != ai.CodeBadResponse {
				t.Fatalf("ProcessJob = %v; asset %s, error %+v; want failed at once with %s", err, got.Status, got.Error, ai.CodeBadResponse)
			}
		})
	}
}

// internalText is what a store, a queue or a library might put in an error:
// none of it may reach the asset's error message or the event.
const internalText = "sqlite: CHECK constraint failed: ai_metadata IS NULL OR json_valid(ai_metadata) at /var/lib/klectr/klectr.db"

func checkUserMessage(t *testing.T, msg string) {
	t.Helper()
	if msg == "" || !utf8.ValidString(msg) || strings.ContainsFunc(msg, func(r rune) bool { return !unicode.IsPrint(r) }) {
		t.Errorf("message %q: want one line of printable UTF-8", msg)
	}
	for _, leak := range []string{"sqlite", "CHECK", "json_valid", "/var/lib", "127.0.0.1", "ai-secret-token"} {
		if strings.Contains(msg, leak) {
			t.Errorf("message %q leaks %q", msg, leak)
		}
	}
}

// An analyzer's error that is not one package ai wrote for users (here a
// plain error, and a Permanent wrapping one) fails the asset with its code
// and a generic message; the text stays in the log.
func TestFailedAssetNeverShowsInternalErrorText(t *testing.T) {
	t.Parallel()
	for name, aerr := range map[string]error{
		"plain":      fmt.Errorf("read blob: %s", internalText),
		"permanent":  ai.Permanent(errors.New(internalText)),
		"no message": &ai.Error{Code: ai.CodeImageUnreadable, Err: errors.New(internalText)},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, answer(500, nil, ""), envOptions{})
			e.h.Analyzer = analyzerFunc(func(context.Context, ai.Image) (json.RawMessage, error) { return nil, aerr })
			a, job := e.newAsset()
			job.Attempt = maxAttempts
			e.h.ProcessJob(context.Background(), job)
			got := e.store.get(t, a.ID)
			if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != ai.Code(aerr) {
				t.Fatalf("asset %s, error %+v; want failed with %q", got.Status, got.Error, ai.Code(aerr))
			}
			checkUserMessage(t, got.Error.Message)
			if events := e.notes.delivered(); len(events) != 1 || strings.Contains(string(events[0].Data), "sqlite") {
				t.Errorf("events %q: want one, without the internal text", events)
			}
		})
	}
}

// failingFinish is a store whose Finish refuses every outcome as SQLite
// refused the deep result: the handler returns the error to the queue (for
// the admin's job listing), and when the job dies Reconcile fails the asset
// with a fixed message, not the queue's last error.
type failingFinish struct{ *fakeStore }

func (s failingFinish) Finish(ctx context.Context, id, jobID string, out asset.Outcome) (*asset.Asset, error) {
	return nil, errors.New(internalText)
}

func TestStoreErrorsNeverReachTheUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t, answer(200, nil, okResult), envOptions{})
	a, job := e.newAsset()
	e.h.Store = failingFinish{e.store}
	job.Attempt = maxAttempts
	err := e.h.ProcessJob(context.Background(), job)
	if err == nil || queue.IsPermanent(err) {
		t.Fatalf("ProcessJob = %v; want the store's error, retryable", err)
	}
	if got := e.store.get(t, a.ID); got.Status != asset.StatusProcessing {
		t.Fatalf("asset %s after a refused Finish; want processing", got.Status)
	}

	// The queue marks the job dead with the handler's error as its last.
	e.h.Store = e.store
	dead := &deadJobs{infos: []queue.Info{{ID: job.ID, Queue: job.Queue, State: queue.Dead, Attempt: maxAttempts,
		MaxAttempts: maxAttempts, Payload: job.Payload, Errors: []string{err.Error()}}}}
	if n, err := e.h.Reconcile(context.Background(), dead); err != nil || n != 1 {
		t.Fatalf("Reconcile = %d, %v; want 1", n, err)
	}
	got := e.store.get(t, a.ID)
	if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != "job_dead" {
		t.Fatalf("asset %s, error %+v; want failed with job_dead", got.Status, got.Error)
	}
	checkUserMessage(t, got.Error.Message)
	events := e.notes.delivered()
	if len(events) != 1 || strings.Contains(string(events[0].Data), "CHECK") {
		t.Fatalf("events %q: want one, without the store's text", events)
	}
	checkEvent(t, events[0], got)
}

// The hostile results of TestProcessJobBadAIResultsFailAtOnce against the
// real SQLite store: on main its CHECK (json_valid) refused the deep object
// in Finish, the job was retried with a new AI call each time, and the user
// got job_dead quoting the SQL. Now each fails at once with ai_bad_response,
// and the stored asset and event are valid UTF-8.
func TestBadAIResultsOnTheSQLiteStore(t *testing.T) {
	t.Parallel()
	for name, body := range map[string]string{
		"1500-deep":     strings.Repeat(`{"a":`, 1499) + "{}" + strings.Repeat("}", 1499),
		"invalid UTF-8": "{\"label\":\"Pok\xe9mon\"}",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, answer(200, nil, body), envOptions{})
			db, err := sqlitedb.Open(t.Context(), filepath.Join(t.TempDir(), "klectr.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			store, err := sqlitestore.New(t.Context(), db)
			if err != nil {
				t.Fatal(err)
			}
			e.h.Store = store
			a, job := e.newAsset()
			a.Attempts = 0
			if err := store.Create(t.Context(), a); err != nil {
				t.Fatal(err)
			}
			err = e.h.ProcessJob(context.Background(), job)
			if !queue.IsPermanent(err) || ai.Code(err) != ai.CodeBadResponse {
				t.Fatalf("ProcessJob = %v; want a permanent %s, decided before the store", err, ai.CodeBadResponse)
			}
			got, err := store.Get(t.Context(), a.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != asset.StatusFailed || got.Error == nil || got.Error.Code != ai.CodeBadResponse || e.ai.calls() != 1 {
				t.Fatalf("asset %s, error %+v after %d AI calls; want failed with %s after 1", got.Status, got.Error, e.ai.calls(), ai.CodeBadResponse)
			}
			checkUserMessage(t, got.Error.Message)
			if events := e.notes.delivered(); len(events) != 1 || !utf8.Valid(events[0].Data) {
				t.Fatalf("events %q: want one, valid UTF-8", events)
			}
		})
	}
}

// A draft recorded before results were validated may hold invalid UTF-8;
// its event (sent by Relay) must still be valid UTF-8 JSON, or the official
// client on a websocket drops the connection and never gets it.
func TestRelayedLegacyResultIsValidUTF8(t *testing.T) {
	t.Parallel()
	e := newEnv(t, answer(200, nil, okResult), envOptions{})
	a, _ := e.newAsset()
	at := e.clock.Now().Add(-time.Hour)
	a.Status, a.AIMetadata, a.ProcessedAt, a.UpdatedAt = asset.StatusDraft, json.RawMessage("{\"label\":\"Pok\xe9mon\"}"), &at, at
	a.EventID, a.EventPending, a.Attempts = ulid.Make().String(), true, 1
	e.store.put(a)
	if n, err := e.h.Relay(context.Background(), time.Minute); err != nil || n != 1 {
		t.Fatalf("Relay = %d, %v; want 1", n, err)
	}
	events := e.notes.delivered()
	if len(events) != 1 || !utf8.Valid(events[0].Data) || !strings.Contains(string(events[0].Data), "Pok\uFFFDmon") {
		t.Fatalf("events %q: want one, valid UTF-8, the bad byte replaced", events)
	}
	checkEvent(t, events[0], e.store.get(t, a.ID))
}
