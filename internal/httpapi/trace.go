package httpapi

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/asset"
)

// SpanIntake is the span of an intake's commit of accepted assets and their
// jobs, a child of the request's span. The jobs are built under it, so each
// carries its trace context (the job payload's traceparent) to the worker.
const SpanIntake = "intake.commit"

// noSpan is what a server without a Tracer starts: it records nothing and
// costs no allocation.
var noSpan = trace.SpanFromContext(context.Background())

// traced gives each request of the route pattern a server span named after
// it (e.g. "POST /api/assets/analyze-queue"), the root of a new trace: a
// client's traceparent header is not honoured, so each upload has a trace
// of its own. Without a Tracer it returns h.
func (s *Server) traced(pattern string, h http.Handler) http.Handler {
	if s.Tracer == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := s.Tracer.Start(r.Context(), pattern, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("http.route", pattern)))
		defer span.End()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r.WithContext(ctx))
		span.SetAttributes(attribute.Int("http.response.status_code", rec.status))
		if rec.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(rec.status))
		}
	})
}

// statusRecorder keeps the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection (read deadlines).
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// startCommit starts the intake's span under ctx's request span, and names
// the user and the assets on the request's span.
func (s *Server) startCommit(ctx context.Context, assets []*asset.Asset) (context.Context, trace.Span) {
	if s.Tracer == nil || len(assets) == 0 {
		return ctx, noSpan
	}
	ids := make([]string, len(assets))
	for i, a := range assets {
		ids[i] = a.ID
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("userId", assets[0].UserID), attribute.StringSlice("assetIds", ids))
	return s.Tracer.Start(ctx, SpanIntake, trace.WithAttributes(attribute.Int("assets", len(assets))))
}

// endSpan ends span, recording err if there is one.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, "")
	}
	span.End()
}
