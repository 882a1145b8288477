package httpapi_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// newJobInfo is a job of the ai-processing queue in state st, with a real
// payload.
func newJobInfo(t *testing.T, st queue.State) queue.Info {
	t.Helper()
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	a := newAsset("u1", asset.StatusProcessing, at)
	job, err := wire.NewJob(context.Background(), a, at)
	if err != nil {
		t.Fatal(err)
	}
	i := queue.Info{ID: job.ID, Queue: queue.AIProcessing, State: st, MaxAttempts: 4, Payload: job.Payload, EnqueuedAt: at}
	switch st {
	case queue.Dead:
		done := at.Add(time.Minute)
		i.Attempt, i.FinishedAt = 4, &done
		i.Errors = []string{"ai: 503", "ai: 503", "ai: 503", "ai: timeout"}
	case queue.Completed:
		done := at.Add(time.Minute)
		i.Attempt, i.FinishedAt = 1, &done
	}
	return i
}

// jobBody is a job as the admin API shows it, decoded strictly.
type jobBody struct {
	ID          string         `json:"id"`
	Queue       string         `json:"queue"`
	State       string         `json:"state"`
	Attempt     int            `json:"attempt"`
	MaxAttempts int            `json:"maxAttempts"`
	Payload     map[string]any `json:"payload"`
	Errors      []string       `json:"errors"`
	EnqueuedAt  string         `json:"enqueuedAt"`
	FinishedAt  *string        `json:"finishedAt"`
}

func wantJob(t *testing.T, got jobBody, i queue.Info) {
	t.Helper()
	if got.ID != i.ID || got.Queue != i.Queue || got.State != string(i.State) || got.Attempt != i.Attempt ||
		got.MaxAttempts != i.MaxAttempts || got.Payload["jobId"] != i.ID || len(got.Errors) != len(i.Errors) ||
		got.Errors == nil || (got.FinishedAt == nil) != (i.FinishedAt == nil) {
		t.Errorf("job body %+v does not show %+v", got, i)
	}
}

// TestAdminNeedsAdminRole: a valid token without role admin gets 403
// forbidden on every admin route, and nothing happens.
func TestAdminNeedsAdminRole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dead := newJobInfo(t, queue.Dead)
	e.jobs.set(func(f *fakeJobs) { f.byID[dead.ID] = dead })
	for _, role := range []string{"", "user", "Admin", "administrator"} {
		tok := e.token(t, "u1", role)
		for _, rt := range []struct{ method, path string }{
			{"GET", "/api/admin/queues"},
			{"GET", "/api/admin/jobs"},
			{"GET", "/api/admin/jobs/" + dead.ID},
			{"POST", "/api/admin/jobs/" + dead.ID + "/retry"},
			{"DELETE", "/api/admin/jobs/" + dead.ID},
		} {
			r := e.do(t, e.request(t, rt.method, rt.path, tok, nil))
			r.wantError(t, http.StatusForbidden, "forbidden")
		}
	}
	if len(e.jobs.listCalls()) > 0 || len(e.jobs.deleteCalls()) > 0 || len(e.intake.replayCalls()) > 0 {
		t.Errorf("a non-admin request reached the queue")
	}
}

func TestAdminQueues(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.jobs.set(func(f *fakeJobs) { f.counts = map[queue.State]int{queue.Pending: 2, queue.Dead: 7} })
	r := e.get(t, "/api/admin/queues", e.token(t, "root", "admin"))
	if r.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", r.StatusCode, r.Body)
	}
	var got struct {
		Queues []struct {
			Name   string         `json:"name"`
			Counts map[string]int `json:"counts"`
		} `json:"queues"`
	}
	decodeStrict(t, r.Body, &got)
	want := map[string]int{"pending": 2, "active": 0, "retrying": 0, "completed": 0, "dead": 7}
	if len(got.Queues) != 1 || got.Queues[0].Name != "ai-processing" || len(got.Queues[0].Counts) != len(want) {
		t.Fatalf("body %s", r.Body)
	}
	for k, v := range want {
		if n, ok := got.Queues[0].Counts[k]; !ok || n != v {
			t.Errorf("count %s = %d (present %v), want %d", k, n, ok, v)
		}
	}
}

func TestAdminListJobs(t *testing.T) {
	t.Parallel()
	cases := []struct{ query, want string }{
		{"", "dead 100"},
		{"?state=dead", "dead 100"},
		{"?state=retrying&limit=5", "retrying 5"},
		{"?state=pending&limit=1", "pending 1"},
		{"?state=completed&limit=1000", "completed 1000"},
		{"?state=active", "active 100"},
	}
	for _, c := range cases {
		t.Run("valid"+c.query, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			dead, done := newJobInfo(t, queue.Dead), newJobInfo(t, queue.Completed)
			e.jobs.set(func(f *fakeJobs) { f.byID[dead.ID], f.byID[done.ID] = dead, done })
			r := e.get(t, "/api/admin/jobs"+c.query, e.token(t, "root", "admin"))
			if r.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", r.StatusCode, r.Body)
			}
			var got struct {
				Jobs []jobBody `json:"jobs"`
			}
			decodeStrict(t, r.Body, &got)
			if got.Jobs == nil {
				t.Errorf("jobs is null, want an array: %s", r.Body)
			}
			if calls := e.jobs.listCalls(); len(calls) != 1 || calls[0] != c.want {
				t.Errorf("List calls %v, want [%s]", calls, c.want)
			}
			if c.want == "dead 100" {
				if len(got.Jobs) != 1 {
					t.Fatalf("%d dead jobs, want 1: %s", len(got.Jobs), r.Body)
				}
				wantJob(t, got.Jobs[0], dead)
			}
		})
	}
	for _, q := range []string{"?state=bogus", "?state=DEAD", "?limit=0", "?limit=1001", "?limit=x", "?state=dead&limit=-5"} {
		t.Run("invalid"+q, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.get(t, "/api/admin/jobs"+q, e.token(t, "root", "admin"), doOptions{noRequestCheck: true}).wantError(t, 400, "bad_request")
			if calls := e.jobs.listCalls(); len(calls) != 0 {
				t.Errorf("an invalid query reached the queue: %v", calls)
			}
		})
	}
}

func TestAdminGetJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pending, dead := newJobInfo(t, queue.Pending), newJobInfo(t, queue.Dead)
	e.jobs.set(func(f *fakeJobs) { f.byID[pending.ID], f.byID[dead.ID] = pending, dead })
	tok := e.token(t, "root", "admin")
	for _, i := range []queue.Info{pending, dead} {
		r := e.get(t, "/api/admin/jobs/"+i.ID, tok)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", r.StatusCode, r.Body)
		}
		var got jobBody
		decodeStrict(t, r.Body, &got)
		wantJob(t, got, i)
	}
	e.get(t, "/api/admin/jobs/"+ulid.Make().String(), tok).wantError(t, 404, "not_found")
}

func TestAdminRetryJob(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"dead job replayed", nil, 200, ""},
		{"not dead", queue.ErrNotDead, 409, "conflict"},
		{"unknown", queue.ErrNotFound, 404, "not_found"},
		{"queue down", errors.New("connection reset"), 503, "unavailable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			i := newJobInfo(t, queue.Pending) // what Get shows after a replay
			e.jobs.set(func(f *fakeJobs) { f.byID[i.ID] = i })
			e.intake.set(func(f *fakeIntake) { f.replayErr = c.err })
			r := e.do(t, e.request(t, "POST", "/api/admin/jobs/"+i.ID+"/retry", e.token(t, "root", "admin"), nil))
			if c.err != nil {
				r.wantError(t, c.status, c.code)
			} else {
				if r.StatusCode != http.StatusOK {
					t.Fatalf("status %d: %s", r.StatusCode, r.Body)
				}
				var got jobBody
				decodeStrict(t, r.Body, &got)
				wantJob(t, got, i)
			}
			if calls := e.intake.replayCalls(); len(calls) != 1 || calls[0] != i.ID {
				t.Errorf("Replay calls %v, want [%s]", calls, i.ID)
			}
		})
	}
}

func TestAdminDeleteJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dead, active := newJobInfo(t, queue.Dead), newJobInfo(t, queue.Active)
	e.jobs.set(func(f *fakeJobs) {
		f.byID[dead.ID], f.byID[active.ID] = dead, active
		f.deleteErr[active.ID] = queue.ErrActive
	})
	tok := e.token(t, "root", "admin")

	r := e.do(t, e.request(t, "DELETE", "/api/admin/jobs/"+dead.ID, tok, nil))
	if r.StatusCode != http.StatusNoContent || len(r.Body) != 0 {
		t.Fatalf("status %d body %q, want 204 and no body", r.StatusCode, r.Body)
	}
	if d := e.jobs.deleteCalls(); len(d) != 1 || d[0] != dead.ID {
		t.Errorf("deleted %v", d)
	}
	e.do(t, e.request(t, "DELETE", "/api/admin/jobs/"+dead.ID, tok, nil)).wantError(t, 404, "not_found")
	e.do(t, e.request(t, "DELETE", "/api/admin/jobs/"+active.ID, tok, nil)).wantError(t, 409, "conflict")
	if _, err := e.jobs.Get(t.Context(), active.ID); err != nil {
		t.Errorf("the active job is gone: %v", err)
	}
}
