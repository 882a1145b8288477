package wire_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// The job an intake builds is valid against api/ai-job.schema.json and
// decodes back to the asset it was built from.
func TestNewJobMatchesSchema(t *testing.T) {
	t.Parallel()
	c := jsonschema.NewCompiler()
	schema, err := c.Compile("../../api/ai-job.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 4, 5, 6, 7, 891_234_567, time.FixedZone("x", 3600))
	const assetID, jobID = "01KA0000000000000000000000", "01KJ0000000000000000000000"
	sum := strings.Repeat("ab", 32)
	ctx := context.Background()
	a := &asset.Asset{ID: assetID, UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: jobID,
		ContentType: "image/png", Size: 10, SHA256: sum, BlobKey: "0123456789abcdef0123456789abcdef"}
	job, err := wire.NewJob(ctx, a, now)
	if err != nil {
		t.Fatal(err)
	}
	if job.ID != jobID || job.Queue != queue.AIProcessing || job.Group != "u1" || !job.EnqueuedAt.Equal(now.Truncate(time.Millisecond)) {
		t.Fatalf("job %+v", job)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(job.Payload))
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Validate(inst); err != nil {
		t.Fatalf("payload %s breaks ai-job.schema.json: %v", job.Payload, err)
	}
	p, err := wire.DecodeJob(job.ID, job.Payload)
	if err != nil {
		t.Fatal(err)
	}
	want := wire.JobPayload{JobID: jobID, AssetID: assetID, UserID: "u1", BlobKey: a.BlobKey, ContentType: "image/png",
		Size: 10, SHA256: sum, EnqueuedAt: now.UTC().Truncate(time.Millisecond)}
	if p != want {
		t.Fatalf("decoded %+v, want %+v", p, want)
	}

	// The fairness key is the user; one the queue would refuse still keeps
	// the user's jobs together.
	long := *a
	long.UserID = strings.Repeat("é", queue.MaxGroupLen)
	lj, err := wire.NewJob(ctx, &long, now)
	if err != nil || lj.Validate() != nil || !strings.HasPrefix(lj.Group, "sha256:") {
		t.Fatalf("job of a long user id: group %q, %v, %v", lj.Group, err, lj.Validate())
	}
	if again, _ := wire.NewJob(ctx, &long, now); again.Group != lj.Group {
		t.Fatal("two jobs of one user in two groups")
	}

	if _, err := wire.NewJob(ctx, &asset.Asset{ID: assetID}, now); err == nil {
		t.Fatal("NewJob of an asset without a job id succeeded")
	}
	if _, err := wire.DecodeJob("01J", []byte(`{"jobId":"01J"}`)); err == nil {
		t.Fatal("DecodeJob of a payload without assetId succeeded")
	}
}

// A job built under a span carries its W3C trace context, valid against
// the schema; one built without a span (tracing off) has no traceparent
// field at all, as payloads had before it existed.
func TestNewJobCarriesTraceparent(t *testing.T) {
	t.Parallel()
	schema, err := jsonschema.NewCompiler().Compile("../../api/ai-job.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	a := &asset.Asset{ID: "01KA0000000000000000000000", UserID: "u1", Status: asset.StatusProcessing,
		ProcessingJobID: "01KJ0000000000000000000000", ContentType: "image/png", Size: 10,
		SHA256: strings.Repeat("ab", 32), BlobKey: "0123456789abcdef0123456789abcdef"}
	now := time.Now()

	off, err := wire.NewJob(context.Background(), a, now)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(off.Payload, []byte("traceparent")) {
		t.Fatalf("payload without a span: %s", off.Payload)
	}

	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	on, err := wire.NewJob(trace.ContextWithSpanContext(context.Background(), sc), a, now)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(on.Payload))
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Validate(inst); err != nil {
		t.Fatalf("payload %s breaks ai-job.schema.json: %v", on.Payload, err)
	}
	p, err := wire.DecodeJob(on.ID, on.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if want := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; p.Traceparent != want {
		t.Fatalf("traceparent %q, want %q", p.Traceparent, want)
	}
}
