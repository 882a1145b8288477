package app

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// timelineReply is an asset's pipeline timestamps as GET /api/assets/{id}
// returns them.
type timelineReply struct {
	Status                                                                  string
	ReceivedAt, EnqueuedAt, StartedAt, AnalyzedAt, ProcessedAt, EventSentAt *time.Time
}

// TestSLOReportMatchesKnownTimings runs uploads through an AI service that
// answers after exactly aiDelay: every asset's timestamps are in pipeline
// order, the analysis stage lasts at least aiDelay, and the SLO report,
// /metrics and the queue history say what those timestamps say.
func TestSLOReportMatchesKnownTimings(t *testing.T) {
	t.Parallel()
	const aiDelay = 200 * time.Millisecond
	fake := newFakeAI(t, func(r *http.Request, _ string, _, _ int) (int, string) {
		select {
		case <-time.After(aiDelay): // the fixed delay is what is measured
		case <-r.Context().Done():
			return 0, ""
		}
		return http.StatusOK, `{"label":"card"}`
	})
	s := startServer(t, map[string]string{"AI_SERVICE_URL": fake.url()})
	admin, err := s.keys.Sign("ops", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	var ids []string
	for range 3 {
		ids = append(ids, s.uploadOK(s.alice, "valid/go-turns-two-280x360.jpeg", "valid/video-001.png")...)
	}
	// Each objective's steps by the assets' own timestamps.
	spans := map[string][]time.Duration{}
	for _, id := range ids {
		if a := s.waitFinal(s.alice, id); a.Status != "draft" {
			t.Fatalf("asset %s ended %s, want draft", id, a.Status)
		}
		tl := s.waitEventSent(id)
		steps := []*time.Time{tl.ReceivedAt, tl.EnqueuedAt, tl.StartedAt, tl.AnalyzedAt, tl.ProcessedAt, tl.EventSentAt}
		for i, at := range steps {
			if at == nil {
				t.Fatalf("asset %s: timestamp %d of received…eventSent is null: %+v", id, i, tl)
			}
			if i > 0 && at.Before(*steps[i-1]) {
				t.Fatalf("asset %s: timestamps out of pipeline order: %+v", id, tl)
			}
		}
		if d := tl.AnalyzedAt.Sub(*tl.StartedAt); d < aiDelay {
			t.Errorf("asset %s: analysis took %v by its timestamps, under the AI's fixed %v", id, d, aiDelay)
		}
		spans["confirmation"] = append(spans["confirmation"], tl.EnqueuedAt.Sub(*tl.ReceivedAt))
		spans["processing"] = append(spans["processing"], tl.ProcessedAt.Sub(*tl.ReceivedAt))
		spans["event"] = append(spans["event"], tl.EventSentAt.Sub(*tl.ProcessedAt))
	}

	resp, body := s.do("GET", "/api/admin/slo?window=1h", admin, nil, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/admin/slo: %d %s", resp.StatusCode, body)
	}
	t.Logf("SLO report: %s", body)
	var rep struct {
		Sampled    int
		Truncated  bool
		Objectives []struct {
			Name          string
			TargetSeconds float64
			Percentile    float64
			ValueSeconds  *float64
			Samples       int
			Met           *bool
		}
		Stages []struct {
			Name       string
			Samples    int
			P50Seconds *float64
		}
	}
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Sampled != len(ids) || rep.Truncated {
		t.Fatalf("report sampled %d (truncated %t), want the %d uploads", rep.Sampled, rep.Truncated, len(ids))
	}
	want := map[string]struct{ target, pct float64 }{"confirmation": {2, 99}, "processing": {60, 95}, "event": {1, 99}}
	for _, o := range rep.Objectives {
		w, ok := want[o.Name]
		if !ok {
			t.Fatalf("unknown objective %q", o.Name)
		}
		delete(want, o.Name)
		if o.TargetSeconds != w.target || o.Percentile != w.pct {
			t.Errorf("%s: target %vs at p%v, want %vs at p%v", o.Name, o.TargetSeconds, o.Percentile, w.target, w.pct)
		}
		if o.Samples != len(ids) || o.ValueSeconds == nil || o.Met == nil {
			t.Fatalf("%s: %d samples, value %v, met %v; want %d samples and a value", o.Name, o.Samples, o.ValueSeconds, o.Met, len(ids))
		}
		// p95 and p99 of six runs are the slowest of them (nearest rank),
		// which the assets' timestamps give to the millisecond.
		ds := spans[o.Name]
		slices.Sort(ds)
		got := time.Duration(*o.ValueSeconds * float64(time.Second)).Round(time.Millisecond)
		if got != ds[len(ds)-1] {
			t.Errorf("%s: value %v, want %v (the slowest asset's, by its timestamps)", o.Name, got, ds[len(ds)-1])
		}
		if *o.Met != (*o.ValueSeconds < o.TargetSeconds) {
			t.Errorf("%s: met %t for %vs against a %vs target", o.Name, *o.Met, *o.ValueSeconds, o.TargetSeconds)
		}
		if o.Name == "processing" && (*o.ValueSeconds < aiDelay.Seconds() || !*o.Met) {
			t.Errorf("processing p95 = %vs, met %t; want at least the AI's fixed %v, and met", *o.ValueSeconds, *o.Met, aiDelay)
		}
	}
	if len(want) > 0 {
		t.Fatalf("objectives missing from the report: %v", want)
	}
	for _, st := range rep.Stages {
		if st.Name == "analysis" && (st.Samples != len(ids) || st.P50Seconds == nil || *st.P50Seconds < aiDelay.Seconds()) {
			t.Errorf("analysis stage: %d samples, p50 %v; want %d, at least %v", st.Samples, st.P50Seconds, len(ids), aiDelay)
		}
	}

	if resp, _ := s.do("GET", "/api/admin/slo", s.alice, nil, ""); resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET /api/admin/slo as a user = %d, want 403", resp.StatusCode)
	}
	for _, bad := range []string{"30s", "8d", "soon"} {
		if resp, _ := s.do("GET", "/api/admin/slo?window="+bad, admin, nil, ""); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /api/admin/slo?window=%s = %d, want 400", bad, resp.StatusCode)
		}
	}

	s.checkStageMetrics(len(ids), aiDelay)
	s.checkQueueHistory(admin)
}

// waitEventSent polls an asset until its eventSentAt is set (the event is
// published just after the final state is stored).
func (s *server) waitEventSent(id string) timelineReply {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, b := s.do("GET", "/api/assets/"+id, s.alice, nil, "")
		var tl timelineReply
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &tl) != nil {
			s.t.Fatalf("GET asset %s: %d %s", id, resp.StatusCode, b)
		}
		if tl.EventSentAt != nil {
			return tl
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("asset %s: eventSentAt still null after 30s: %s", id, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkStageMetrics reads /metrics: every stage histogram has one
// observation per asset, and the AI calls' total is at least n × delay.
func (s *server) checkStageMetrics(n int, delay time.Duration) {
	s.t.Helper()
	resp, b := s.do("GET", "/metrics", "", nil, "")
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	values := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if name, v, ok := strings.Cut(line, " "); ok && strings.HasPrefix(name, "klectr_") {
			var f float64
			if json.Unmarshal([]byte(v), &f) == nil {
				values[name] = f
			}
		}
	}
	// 3 requests of 2 files: the ack is per request.
	for name, want := range map[string]float64{
		`klectr_ack_seconds_count`:                        3,
		`klectr_queue_wait_seconds_count`:                 float64(n),
		`klectr_ai_call_seconds_count{outcome="ok"}`:      float64(n),
		`klectr_ai_outcomes_total{outcome="ok"}`:          float64(n),
		`klectr_end_to_end_seconds_count{status="draft"}`: float64(n),
		`klectr_job_attempts_sum{status="draft"}`:         float64(n),
		`klectr_event_lag_seconds_count`:                  float64(n),
	} {
		if got, ok := values[name]; !ok || got != want {
			s.t.Errorf("/metrics %s = %v (present %t), want %v", name, got, ok, want)
		}
	}
	if sum := values[`klectr_ai_call_seconds_sum{outcome="ok"}`]; sum < float64(n)*delay.Seconds() {
		s.t.Errorf("klectr_ai_call_seconds_sum = %vs, under %d calls × %v", sum, n, delay)
	}
}

// checkQueueHistory: the process samples the queue counts from its start,
// and GET /api/admin/queues?history=1h returns the samples.
func (s *server) checkQueueHistory(admin string) {
	s.t.Helper()
	resp, b := s.do("GET", "/api/admin/queues?history=1h", admin, nil, "")
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET /api/admin/queues?history=1h: %d %s", resp.StatusCode, b)
	}
	var q struct {
		History []struct {
			At     time.Time
			Counts map[string]int
		}
	}
	if err := json.Unmarshal(b, &q); err != nil {
		s.t.Fatal(err)
	}
	// The first sample is taken when the server starts listening, before
	// any upload of this test.
	if len(q.History) == 0 || q.History[0].Counts == nil {
		s.t.Fatalf("queue history = %s, want the sample taken at start", b)
	}
	if resp, _ := s.do("GET", "/api/admin/queues?history=2h", admin, nil, ""); resp.StatusCode != http.StatusBadRequest {
		s.t.Errorf("history=2h = %d, want 400 (an hour is kept)", resp.StatusCode)
	}
}
