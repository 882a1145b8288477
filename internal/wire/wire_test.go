package wire_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

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
	a := &asset.Asset{ID: assetID, UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: jobID,
		ContentType: "image/png", Size: 10, SHA256: sum, BlobKey: "0123456789abcdef0123456789abcdef"}
	job, err := wire.NewJob(a, now)
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
	lj, err := wire.NewJob(&long, now)
	if err != nil || lj.Validate() != nil || !strings.HasPrefix(lj.Group, "sha256:") {
		t.Fatalf("job of a long user id: group %q, %v, %v", lj.Group, err, lj.Validate())
	}
	if again, _ := wire.NewJob(&long, now); again.Group != lj.Group {
		t.Fatal("two jobs of one user in two groups")
	}

	if _, err := wire.NewJob(&asset.Asset{ID: assetID}, now); err == nil {
		t.Fatal("NewJob of an asset without a job id succeeded")
	}
	if _, err := wire.DecodeJob("01J", []byte(`{"jobId":"01J"}`)); err == nil {
		t.Fatal("DecodeJob of a payload without assetId succeeded")
	}
}
