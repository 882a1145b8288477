package app

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
)

// TestDashboardUsesExportedMetrics: every klectr_ metric the Grafana
// dashboard (deploy/grafana/klectr.json) queries is one a process exports,
// so renaming a metric cannot silently empty a panel.
func TestDashboardUsesExportedMetrics(t *testing.T) {
	t.Parallel()
	m := newMetrics(func(context.Context) (map[queue.State]int, error) { return map[queue.State]int{}, nil }, func() int { return 0 })
	m.reg.MustRegister(ai.BreakerCollector(ai.NewBreaker(ai.NewBuiltin(ai.BuiltinConfig{}), ai.BreakerConfig{})))
	// A vector exports nothing until it has a child: observe each stage once.
	m.QueueWait(time.Second)
	m.AICall(pipeline.OutcomeOK, time.Second)
	now := time.Now()
	m.Finished(&asset.Asset{Status: asset.StatusDraft, Attempts: 1, ReceivedAt: &now, ProcessedAt: &now})
	m.EventSent(time.Millisecond)
	mux := http.NewServeMux()
	mux.HandleFunc(uploadRoute, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	m.instrument(mux).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/api/assets/analyze-queue", nil))

	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
	}
	dash, err := os.ReadFile("../../deploy/grafana/klectr.json")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`klectr_[a-z_]+`).FindAllString(string(dash), -1)
	if len(names) == 0 {
		t.Fatal("the dashboard queries no klectr_ metric")
	}
	suffix := regexp.MustCompile(`_(bucket|count|sum)$`)
	for _, n := range names {
		if base := suffix.ReplaceAllString(n, ""); !exported[base] && !exported[n] {
			t.Errorf("the dashboard queries %s, which no collector exports", n)
		}
	}
	for _, want := range []string{"klectr_ack_seconds", "klectr_queue_wait_seconds", "klectr_ai_call_seconds",
		"klectr_end_to_end_seconds", "klectr_event_lag_seconds", "klectr_job_attempts", "klectr_ai_outcomes_total"} {
		if !exported[want] {
			t.Errorf("%s is not exported", want)
		}
	}
}
