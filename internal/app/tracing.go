package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/config"
)

// traceFlushTimeout bounds the export of the spans still buffered at stop,
// so that an unreachable collector delays a stop by at most this much.
const traceFlushTimeout = 5 * time.Second

// newTracer returns the process's tracer, exporting over OTLP/HTTP to
// {OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces, and the function that flushes
// and closes its exporter. Without OTEL_EXPORTER_OTLP_ENDPOINT tracing is
// off: the tracer is nil, no span is ever started and no traceparent is
// sent. The SDK reads the other standard variables itself
// (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE,
// OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*).
func newTracer(ctx context.Context, cfg *config.Config, m mode, log *slog.Logger) (trace.Tracer, func(), error) {
	if cfg.OTLPEndpoint == "" {
		return nil, func() {}, nil
	}
	endpoint := strings.TrimRight(cfg.OTLPEndpoint, "/") + "/v1/traces"
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
	if err != nil {
		return nil, nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	// A resource detector that fails (a bad OTEL_RESOURCE_ATTRIBUTES) still
	// yields the rest; the service name comes last, so it wins.
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", cfg.ServiceName), attribute.String("klectr.process", string(m))))
	if err != nil {
		log.Warn("trace resource incomplete", "err", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	// The SDK reports failed exports here, instead of its own log format.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing", "component", "otel", "err", err)
	}))
	u, _ := url.Parse(endpoint)
	log.Info("tracing on", "endpoint", u.Redacted(), "service", cfg.ServiceName)
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			log.Warn("trace exporter did not flush", "err", err)
		}
	}
	return tp.Tracer("github.com/klectr/klectr"), stop, nil
}

// traceLog is a slog.Handler that adds the traceId and spanId of the
// record's context to each line written while a span is recording, so that
// a line can be found from its trace and the reverse. Installed only with
// tracing on.
type traceLog struct{ slog.Handler }

func (h traceLog) Handle(ctx context.Context, r slog.Record) error {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		sc := span.SpanContext()
		r = r.Clone()
		r.AddAttrs(slog.String("traceId", sc.TraceID().String()), slog.String("spanId", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceLog) WithAttrs(as []slog.Attr) slog.Handler { return traceLog{h.Handler.WithAttrs(as)} }
func (h traceLog) WithGroup(name string) slog.Handler    { return traceLog{h.Handler.WithGroup(name)} }
