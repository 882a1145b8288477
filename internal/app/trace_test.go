package app

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// fakeCollector is an OTLP/HTTP collector (protobuf, uncompressed: the
// exporter's defaults) that keeps every span it receives.
type fakeCollector struct {
	srv *httptest.Server

	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string // service.name of each batch
}

func newFakeCollector(t *testing.T) *fakeCollector {
	t.Helper()
	c := &fakeCollector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			http.Error(w, "no such endpoint", http.StatusNotFound)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					c.services = append(c.services, kv.GetValue().GetStringValue())
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				c.spans = append(c.spans, ss.GetSpans()...)
			}
		}
		c.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *fakeCollector) received() ([]*tracepb.Span, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*tracepb.Span(nil), c.spans...), append([]string(nil), c.services...)
}

// spanAttr is a string or integer attribute of s, as a string.
func spanAttr(s *tracepb.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() != key {
			continue
		}
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			return v.StringValue
		case *commonpb.AnyValue_IntValue:
			return strconv.FormatInt(v.IntValue, 10)
		}
	}
	return ""
}

// traceAI is a fake AI service that keeps the traceparent of each call.
func traceAI(t *testing.T) (*fakeAI, func() []string) {
	var mu sync.Mutex
	var parents []string
	fake := newFakeAI(t, func(r *http.Request, _ string, _, _ int) (int, string) {
		mu.Lock()
		parents = append(parents, r.Header.Get("Traceparent"))
		mu.Unlock()
		return http.StatusOK, `{"label":"card"}`
	})
	return fake, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), parents...)
	}
}

// jobPayload reads a job's payload through the admin API.
func jobPayload(t *testing.T, s *server, jobID string) map[string]any {
	t.Helper()
	admin, _ := s.keys.Sign("ops", "admin", time.Hour)
	var job struct{ Payload map[string]any }
	if status, err := getJSON(s.url, "/api/admin/jobs/"+jobID, admin, &job); err != nil || status != http.StatusOK {
		t.Fatalf("GET job %s: %d %v", jobID, status, err)
	}
	return job.Payload
}

// logLines returns the JSON log lines of s that have jobId.
func logLines(s *server, jobID string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["jobId"] == jobID {
			out = append(out, rec)
		}
	}
	return out
}

// Issue 11, item 3: with OTEL_EXPORTER_OTLP_ENDPOINT one upload is one
// trace, from the upload request through its intake commit, the job's
// attempt (in the worker, from the payload's traceparent) with its blob
// read, AI call and event publish; the AI service receives the AI call's
// traceparent; the job's log lines carry the trace id; and the spans are
// exported by the time the server has stopped.
func TestServeTracesAnUpload(t *testing.T) {
	t.Parallel()
	col := newFakeCollector(t)
	fake, parents := traceAI(t)
	s := startServer(t, map[string]string{
		"AI_SERVICE_URL":              fake.url(),
		"OTEL_EXPORTER_OTLP_ENDPOINT": col.srv.URL,
		"OTEL_SERVICE_NAME":           "klectr-test",
	})
	ids := s.uploadOK(s.alice, "valid/go-turns-two-280x360.jpeg")
	a := s.waitFinal(s.alice, ids[0])
	if a.Status != "draft" {
		t.Fatalf("asset ended %s: %+v", a.Status, a.Error)
	}
	payload := jobPayload(t, s, a.ProcessingJobID)
	if code := s.shutdown(); code != 0 {
		t.Fatalf("serve exited with %d:\n%s", code, s.logs.String())
	}

	spans, services := col.received()
	byName := map[string][]*tracepb.Span{}
	for _, sp := range spans {
		byName[sp.GetName()] = append(byName[sp.GetName()], sp)
	}
	one := func(name string) *tracepb.Span {
		t.Helper()
		if len(byName[name]) != 1 {
			t.Fatalf("%d spans named %q, want 1; got %d spans in all", len(byName[name]), name, len(spans))
		}
		return byName[name][0]
	}
	upload := one("POST /api/assets/analyze-queue")
	commit := one("intake.commit")
	attempt := one("job.attempt")
	blobRead, analyze, publish := one("blob.read"), one("ai.analyze"), one("event.publish")
	traceID := hex.EncodeToString(upload.GetTraceId())
	spanID := func(sp *tracepb.Span) string { return hex.EncodeToString(sp.GetSpanId()) }
	for _, c := range []struct {
		span   *tracepb.Span
		parent string
	}{
		{upload, ""}, {commit, spanID(upload)}, {attempt, spanID(commit)},
		{blobRead, spanID(attempt)}, {analyze, spanID(attempt)}, {publish, spanID(attempt)},
	} {
		if got := hex.EncodeToString(c.span.GetTraceId()); got != traceID {
			t.Errorf("%s is in trace %s, want the upload's %s", c.span.GetName(), got, traceID)
		}
		if got := hex.EncodeToString(c.span.GetParentSpanId()); got != c.parent {
			t.Errorf("%s's parent is %q, want %q", c.span.GetName(), got, c.parent)
		}
	}
	for k, want := range map[string]string{"jobId": a.ProcessingJobID, "assetId": ids[0], "userId": "alice", "attempt": "1", "outcome": "draft"} {
		if got := spanAttr(attempt, k); got != want {
			t.Errorf("job.attempt %s = %q, want %q", k, got, want)
		}
	}
	if got := spanAttr(upload, "http.response.status_code"); got != "202" {
		t.Errorf("upload span status code %q", got)
	}
	for _, svc := range services {
		if svc != "klectr-test" {
			t.Errorf("service.name %q, want OTEL_SERVICE_NAME's klectr-test", svc)
		}
	}

	if got, want := payload["traceparent"], "00-"+traceID+"-"+spanID(commit)+"-01"; got != want {
		t.Errorf("job payload traceparent %v, want %s", got, want)
	}
	if got, want := parents(), "00-"+traceID+"-"+spanID(analyze)+"-01"; len(got) != 1 || got[0] != want {
		t.Errorf("the AI service got traceparents %q, want [%s]", got, want)
	}
	lines := logLines(s, a.ProcessingJobID)
	final := false
	for _, rec := range lines {
		if rec["msg"] == "asset final" {
			final = true
			if rec["traceId"] != traceID || rec["spanId"] != spanID(attempt) {
				t.Errorf("log line %v: want traceId %s spanId %s", rec, traceID, spanID(attempt))
			}
		}
	}
	if !final {
		t.Errorf("no \"asset final\" line about job %s among %v", a.ProcessingJobID, lines)
	}
}

// With tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT) an upload is processed
// as before, and nothing of tracing shows: no traceparent in the job
// payload or to the AI service, no trace id in the logs.
func TestServeWithoutTracing(t *testing.T) {
	t.Parallel()
	fake, parents := traceAI(t)
	s := startServer(t, map[string]string{"AI_SERVICE_URL": fake.url()})
	ids := s.uploadOK(s.alice, "valid/go-turns-two-280x360.jpeg")
	a := s.waitFinal(s.alice, ids[0])
	if a.Status != "draft" {
		t.Fatalf("asset ended %s: %+v", a.Status, a.Error)
	}
	if p := jobPayload(t, s, a.ProcessingJobID); p["traceparent"] != nil || p["assetId"] != ids[0] {
		t.Errorf("job payload %v: want the asset's, without traceparent", p)
	}
	if got := parents(); len(got) != 1 || got[0] != "" {
		t.Errorf("the AI service got traceparents %q, want one call without", got)
	}
	if s.shutdown() != 0 {
		t.Fatal("serve failed")
	}
	if strings.Contains(s.logs.String(), "traceId") || strings.Contains(s.logs.String(), "tracing on") {
		t.Errorf("logs mention tracing while it is off:\n%s", s.logs.String())
	}
}
