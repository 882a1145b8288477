package pipeline

import (
	"context"
	"errors"
	"testing"

	"github.com/klectr/klectr/internal/queue"
)

// With tracing off (no Tracer) the spans of an attempt cost no allocation.
func TestNoTracerAllocatesNothing(t *testing.T) {
	h := &Handler{}
	job := &queue.Job{ID: "j", Attempt: 1, MaxAttempts: 4}
	p := Payload{JobID: "j", AssetID: "a", Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	fail := errors.New("x")
	allocs := testing.AllocsPerRun(100, func() {
		ctx, span := h.startAttempt(context.Background(), job, p)
		_, s := h.span(ctx, SpanAnalyze, 0)
		endSpan(s, fail)
		setOutcome(ctx, "draft")
		endAttempt(span, job, fail)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per attempt with tracing off, want 0", allocs)
	}
}
