package app

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Issue 10, item 4's wiring: with AI_SERVICE_URL the worker's analyzer is
// the breaker; while the service is down the breaker opens, /readyz stays
// ready and says so, the admin counts and /metrics show it, and the jobs
// finish once the service is back.
func TestServeAIBreakerOpensAndCloses(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	fake := newFakeAI(t, func(*http.Request, string, int, int) (int, string) {
		if down.Load() {
			return http.StatusInternalServerError, `{"error":"down"}`
		}
		return http.StatusOK, `{"label":"card"}`
	})
	s := startServer(t, map[string]string{
		"AI_SERVICE_URL":     fake.url(),
		"JOB_BACKOFF":        "10ms",
		"JOB_MAX_RETRIES":    "3",
		"WORKER_CONCURRENCY": "4",
	})
	admin, _ := s.keys.Sign("ops", "admin", time.Hour)
	breaker := func(path, field, token string) string {
		var b map[string]json.RawMessage
		if status, err := getJSON(s.url, path, token, &b); err != nil || (path == "/readyz" && status != http.StatusOK) {
			t.Fatalf("GET %s: %d %v", path, status, err)
		}
		var br struct{ State string }
		json.Unmarshal(b[field], &br)
		return br.State
	}
	if st := breaker("/readyz", "ai", ""); st != "closed" {
		t.Fatalf("/readyz ai = %q before any call, want closed", st)
	}

	ids, err := postImages(context.Background(), s.url, s.alice, fixture(t, "valid/video-001.q50.420.jpeg"), 8)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for breaker("/readyz", "ai", "") != "open" {
		if time.Now().After(deadline) {
			t.Fatalf("the breaker did not open within 30s:\n%s", s.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := breaker("/api/admin/queues", "aiBreaker", admin); st != "open" && st != "half-open" {
		t.Fatalf("admin aiBreaker = %q, want open", st)
	}
	resp, body := s.do("GET", "/metrics", "", nil, "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `klectr_ai_breaker_state{state="closed"} 0`) ||
		!strings.Contains(string(body), "klectr_ai_breaker_transitions_total") {
		t.Fatalf("/metrics lacks the open breaker: %d\n%s", resp.StatusCode, grepLines(string(body), "klectr_ai_breaker"))
	}

	down.Store(false)
	owners := map[string]string{}
	for _, id := range ids {
		owners[id] = s.alice
	}
	for id, a := range waitAllFinal(t, s.url, owners, time.Minute) {
		if a.Status != "draft" {
			t.Errorf("asset %s ended %s (%+v) after the outage; want draft", id, a.Status, a.Error)
		}
	}
	if st := breaker("/readyz", "ai", ""); st != "closed" {
		t.Fatalf("/readyz ai = %q after recovery, want closed", st)
	}
	_, body = s.do("GET", "/metrics", "", nil, "")
	if !strings.Contains(string(body), `klectr_ai_breaker_state{state="closed"} 1`) {
		t.Fatalf("/metrics after recovery:\n%s", grepLines(string(body), "klectr_ai_breaker"))
	}
}

// A process on the built-in analyzer has no breaker to report.
func TestServeBuiltinHasNoBreaker(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	_, body := s.do("GET", "/readyz", "", nil, "")
	if strings.Contains(string(body), `"ai"`) {
		t.Fatalf("/readyz: %s", body)
	}
	_, body = s.do("GET", "/metrics", "", nil, "")
	if strings.Contains(string(body), "klectr_ai_breaker") {
		t.Fatal("/metrics reports a breaker on the built-in analyzer")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
