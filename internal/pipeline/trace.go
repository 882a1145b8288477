package pipeline

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/queue"
)

// The spans of a job attempt (Handler.Tracer): one SpanAttempt per
// delivery, a child of the upload's span when the payload carries its
// traceparent; under it SpanBlobRead (opening the stored image; its bytes
// stream into the AI call), SpanAnalyze (the analyzer, whose HTTP request
// carries the traceparent header) and SpanPublish (the asset_processed
// event). The relay's SpanPublish starts a trace of its own: an owed event
// does not keep its upload's trace context.
const (
	SpanAttempt  = "job.attempt"
	SpanBlobRead = "blob.read"
	SpanAnalyze  = "ai.analyze"
	SpanPublish  = "event.publish"
)

// noSpan is what a handler without a Tracer starts: it records nothing and
// costs no allocation.
var noSpan = trace.SpanFromContext(context.Background())

// span starts a span named name under ctx's, or returns ctx and noSpan when
// the handler has no Tracer (tracing off).
func (h *Handler) span(ctx context.Context, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	if h.Tracer == nil {
		return ctx, noSpan
	}
	return h.Tracer.Start(ctx, name, trace.WithSpanKind(kind))
}

// startAttempt starts the attempt's span, continuing the trace of the
// payload's traceparent when it has one. Its outcome starts as "skipped" (a
// repeat delivery acknowledged without work); finish and endAttempt
// overwrite it.
func (h *Handler) startAttempt(ctx context.Context, job *queue.Job, p Payload) (context.Context, trace.Span) {
	if h.Tracer == nil {
		return ctx, noSpan
	}
	if p.Traceparent != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": p.Traceparent})
	}
	ctx, span := h.Tracer.Start(ctx, SpanAttempt, trace.WithSpanKind(trace.SpanKindConsumer))
	span.SetAttributes(
		attribute.String("jobId", job.ID),
		attribute.String("assetId", p.AssetID),
		attribute.String("userId", p.UserID),
		attribute.Int("attempt", job.Attempt),
		attribute.Int("maxAttempts", job.MaxAttempts),
		attribute.String("outcome", "skipped"),
	)
	return ctx, span
}

// endAttempt records how an attempt that returned err ended, unless finish
// already recorded the asset's final state, and ends its span.
func endAttempt(span trace.Span, job *queue.Job, err error) {
	if err != nil && span.IsRecording() {
		outcome := "retry"
		if _, ok := queue.SnoozeDelay(err); ok {
			outcome = "snoozed"
		} else if queue.IsPermanent(err) || job.Attempt >= job.MaxAttempts {
			outcome = "failed"
		}
		span.SetAttributes(attribute.String("outcome", outcome))
		span.SetStatus(codes.Error, outcome)
	}
	span.End()
}

// setOutcome records the asset's final state on ctx's attempt span.
func setOutcome(ctx context.Context, status string) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("outcome", status))
	}
}

// endSpan ends span, recording err, classified by the analyzer's error
// code, if there is one.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetAttributes(attribute.String("error.type", ai.Code(err)))
		span.SetStatus(codes.Error, ai.Code(err))
		if !errors.Is(err, context.Canceled) {
			span.RecordError(err)
		}
	}
	span.End()
}
