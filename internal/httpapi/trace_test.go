package httpapi_test

import (
	"context"
	"net/http"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/httpapi"
)

// commitContexts makes e's intake record the span context each Submit runs
// under: the one an intake's jobs carry as their traceparent.
func commitContexts(e *env) func() []trace.SpanContext {
	var mu sync.Mutex
	var seen []trace.SpanContext
	e.intake.set(func(f *fakeIntake) {
		f.submitHook = func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, trace.SpanContextFromContext(ctx))
			return nil
		}
	})
	return func() []trace.SpanContext {
		mu.Lock()
		defer mu.Unlock()
		return append([]trace.SpanContext(nil), seen...)
	}
}

// endedSpans sends the name of each span that ends.
type endedSpans struct{ ch chan string }

func (p endedSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (p endedSpans) OnEnd(s sdktrace.ReadOnlySpan)                   { p.ch <- s.Name() }
func (p endedSpans) Shutdown(context.Context) error                  { return nil }
func (p endedSpans) ForceFlush(context.Context) error                { return nil }

// An upload is the root span of a new trace, named after its route, with
// the intake's commit as its child; the intake runs under the commit's
// span, so the jobs it builds carry that trace.
func TestUploadIsTraced(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	ended := endedSpans{ch: make(chan string, 10)}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSpanProcessor(ended))
	defer tp.Shutdown(context.Background())
	e := newEnv(t, func(d *httpapi.Deps) { d.Tracer = tp.Tracer("test") })
	commits := commitContexts(e)

	f := expect(t, "valid/basn0g01.png")
	r := e.upload(t, e.token(t, "u1", ""), multipartBody(t, false, filePart(f.name, f.data)))
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d: %s", r.StatusCode, r.Body)
	}
	// The request's span ends once the handler has returned, which may be
	// after the client has the reply.
	for name := range ended.ch {
		if name == "POST /api/assets/analyze-queue" {
			break
		}
	}
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want the upload's and its commit's: %+v", len(spans), spans)
	}
	commit, upload := spans[0], spans[1] // in the order they ended
	if upload.Name != "POST /api/assets/analyze-queue" || upload.Parent.IsValid() || upload.SpanKind != trace.SpanKindServer {
		t.Fatalf("upload span %q kind %v under %v; want a root server span", upload.Name, upload.SpanKind, upload.Parent)
	}
	if commit.Name != httpapi.SpanIntake || commit.Parent.SpanID() != upload.SpanContext.SpanID() || commit.SpanContext.TraceID() != upload.SpanContext.TraceID() {
		t.Fatalf("commit span %q under %v, want under the upload %v", commit.Name, commit.Parent.SpanID(), upload.SpanContext.SpanID())
	}
	attrs := map[string]string{}
	for _, kv := range upload.Attributes {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	if attrs["userId"] != "u1" || attrs["http.response.status_code"] != "202" || attrs["assetIds"] == "" {
		t.Errorf("upload span attributes %v", attrs)
	}
	if got := commits(); len(got) != 1 || got[0].SpanID() != commit.SpanContext.SpanID() {
		t.Errorf("the intake ran under %v, want the commit span %v", got, commit.SpanContext.SpanID())
	}
}

// Without a Tracer the intake runs under no span: its jobs carry no
// traceparent.
func TestUploadWithoutTracer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	commits := commitContexts(e)
	f := expect(t, "valid/basn0g01.png")
	r := e.upload(t, e.token(t, "u1", ""), multipartBody(t, false, filePart(f.name, f.data)))
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d: %s", r.StatusCode, r.Body)
	}
	if got := commits(); len(got) != 1 || got[0].IsValid() {
		t.Errorf("the intake ran under %v, want no span", got)
	}
}
