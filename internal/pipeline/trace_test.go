package pipeline_test

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// headers records the traceparent of each AI call, then answers with
// respond.
type headers struct {
	mu      sync.Mutex
	parents []string
}

func (h *headers) wrap(respond func(w http.ResponseWriter, r *http.Request, n int)) func(w http.ResponseWriter, r *http.Request, n int) {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		h.mu.Lock()
		h.parents = append(h.parents, r.Header.Get("Traceparent"))
		h.mu.Unlock()
		respond(w, r, n)
	}
}

func (h *headers) get() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.parents...)
}

// traced gives e's handler a tracer recording into an in-memory exporter,
// and returns the exporter and a tracer for the test's own "upload" span.
func traced(e *env) (*tracetest.InMemoryExporter, trace.Tracer) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	e.t.Cleanup(func() { tp.Shutdown(context.Background()) })
	e.h.Tracer = tp.Tracer("pipeline")
	return exp, tp.Tracer("test")
}

// uploadJob is the asset's job as an intake builds it under the upload's
// span, at attempt 1.
func uploadJob(t *testing.T, ctx context.Context, e *env) (queue.Job, trace.SpanContext) {
	t.Helper()
	a, _ := e.newAsset()
	job, err := wire.NewJob(ctx, a, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	job.Attempt, job.MaxAttempts = 1, maxAttempts
	return job, trace.SpanContextFromContext(ctx)
}

func byName(spans tracetest.SpanStubs) map[string][]tracetest.SpanStub {
	m := map[string][]tracetest.SpanStub{}
	for _, s := range spans {
		m[s.Name] = append(m[s.Name], s)
	}
	return m
}

func attr(s tracetest.SpanStub, key string) attribute.Value {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// An attempt continues the trace of the payload's traceparent: its span is
// a child of the upload's, the blob read, the AI call and the event's
// publish are its children, and the AI service receives the AI call's span
// as the traceparent.
func TestAttemptContinuesTheUploadsTrace(t *testing.T) {
	t.Parallel()
	var seen headers
	e := newEnv(t, seen.wrap(answer(200, nil, okResult)), envOptions{})
	exp, tracer := traced(e)
	uctx, upload := tracer.Start(context.Background(), "upload")
	job, usc := uploadJob(t, uctx, e)
	upload.End()

	if err := e.h.ProcessJob(context.Background(), &job); err != nil {
		t.Fatalf("ProcessJob: %v", err)
	}
	spans := byName(exp.GetSpans())
	for _, name := range []string{pipeline.SpanAttempt, pipeline.SpanBlobRead, pipeline.SpanAnalyze, pipeline.SpanPublish} {
		if len(spans[name]) != 1 {
			t.Fatalf("%d %s spans, want 1; all: %v", len(spans[name]), name, spans)
		}
	}
	attempt := spans[pipeline.SpanAttempt][0]
	if attempt.SpanContext.TraceID() != usc.TraceID() || attempt.Parent.SpanID() != usc.SpanID() || !attempt.Parent.IsRemote() {
		t.Fatalf("attempt span in trace %s under %s; want trace %s under the upload's span %s",
			attempt.SpanContext.TraceID(), attempt.Parent.SpanID(), usc.TraceID(), usc.SpanID())
	}
	want := map[string]attribute.Value{
		"jobId": attribute.StringValue(job.ID), "userId": attribute.StringValue("u1"),
		"attempt": attribute.IntValue(1), "outcome": attribute.StringValue("draft"),
	}
	for k, v := range want {
		if got := attr(attempt, k); got != v {
			t.Errorf("attempt %s = %v, want %v", k, got.Emit(), v.Emit())
		}
	}
	if attr(attempt, "assetId").AsString() == "" || attempt.SpanKind != trace.SpanKindConsumer {
		t.Errorf("attempt span: assetId %q, kind %v", attr(attempt, "assetId").AsString(), attempt.SpanKind)
	}
	for _, name := range []string{pipeline.SpanBlobRead, pipeline.SpanAnalyze, pipeline.SpanPublish} {
		s := spans[name][0]
		if s.SpanContext.TraceID() != usc.TraceID() || s.Parent.SpanID() != attempt.SpanContext.SpanID() {
			t.Errorf("%s span under %s in trace %s; want under the attempt %s", name, s.Parent.SpanID(), s.SpanContext.TraceID(), attempt.SpanContext.SpanID())
		}
	}
	if got := attr(spans[pipeline.SpanPublish][0], "status").AsString(); got != "draft" {
		t.Errorf("publish span status %q", got)
	}
	ai := spans[pipeline.SpanAnalyze][0].SpanContext
	if got, want := seen.get(), "00-"+ai.TraceID().String()+"-"+ai.SpanID().String()+"-01"; len(got) != 1 || got[0] != want {
		t.Fatalf("the AI service got traceparent %q, want [%s]", got, want)
	}
}

// Each attempt is a span of the same trace with its outcome: a retryable
// AI failure is "retry" with the AI call's error class, the next attempt
// "draft".
func TestAttemptSpansRecordOutcomes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 1 {
			answer(502, nil, "bad gateway")(w, r, n)
			return
		}
		answer(200, nil, okResult)(w, r, n)
	}, envOptions{})
	exp, tracer := traced(e)
	uctx, upload := tracer.Start(context.Background(), "upload")
	job, usc := uploadJob(t, uctx, e)
	upload.End()

	if err := e.h.ProcessJob(context.Background(), &job); err == nil {
		t.Fatal("first attempt succeeded against a 502")
	}
	job.Attempt = 2
	if err := e.h.ProcessJob(context.Background(), &job); err != nil {
		t.Fatalf("second attempt: %v", err)
	}
	spans := byName(exp.GetSpans())
	attempts, calls := spans[pipeline.SpanAttempt], spans[pipeline.SpanAnalyze]
	if len(attempts) != 2 || len(calls) != 2 {
		t.Fatalf("%d attempt and %d AI spans, want 2 of each", len(attempts), len(calls))
	}
	for i, want := range []string{"retry", "draft"} {
		a := attempts[i]
		if got := attr(a, "outcome").AsString(); got != want || a.SpanContext.TraceID() != usc.TraceID() || a.Parent.SpanID() != usc.SpanID() {
			t.Errorf("attempt %d: outcome %q in trace %s under %s; want %q under the upload", i+1, got, a.SpanContext.TraceID(), a.Parent.SpanID(), want)
		}
		if got := attr(a, "attempt").AsInt64(); got != int64(i+1) {
			t.Errorf("attempt %d's span says attempt %d", i+1, got)
		}
	}
	if attempts[0].Status.Code != codes.Error || calls[0].Status.Code != codes.Error || attr(calls[0], "error.type").AsString() == "" {
		t.Errorf("failed attempt: status %v, AI call status %v, error.type %q", attempts[0].Status, calls[0].Status, attr(calls[0], "error.type").AsString())
	}
	if calls[1].Status.Code == codes.Error {
		t.Errorf("the successful AI call's span has status %v", calls[1].Status)
	}
}

// Without a Tracer, no span exists and no traceparent reaches the AI
// service, even for a payload that carries one (written by a process with
// tracing on); the job is done as before.
func TestNoTracerNoTraceparent(t *testing.T) {
	t.Parallel()
	var seen headers
	e := newEnv(t, seen.wrap(answer(200, nil, okResult)), envOptions{})
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	uctx, upload := tp.Tracer("test").Start(context.Background(), "upload")
	job, _ := uploadJob(t, uctx, e)
	upload.End()
	if p, _ := wire.DecodeJob(job.ID, job.Payload); p.Traceparent == "" {
		t.Fatal("the payload has no traceparent")
	}

	if err := e.h.ProcessJob(context.Background(), &job); err != nil {
		t.Fatalf("ProcessJob: %v", err)
	}
	if got := seen.get(); len(got) != 1 || got[0] != "" {
		t.Fatalf("AI calls' traceparents %q, want one call without", got)
	}
	if len(e.notes.delivered()) != 1 {
		t.Fatal("no event sent")
	}
}
