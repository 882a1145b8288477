package realtime_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/pipeline"
)

// TestPipelineEventMatchesSchema checks the payload the pipeline really
// sends (pipeline.NewEvent) against the contract's schema.
func TestPipelineEventMatchesSchema(t *testing.T) {
	t.Parallel()
	sch := eventSchema(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	failed := pipeline.NewEvent(&asset.Asset{
		ID: "01JDQ7Y8W2P3K4M5N6Q7R8S9TC", UserID: "u1", Status: asset.StatusFailed,
		ProcessingJobID: "01JDQ7Y8W2P3K4M5N6Q7R8S9TD", EventID: "e2",
		Error:    &asset.Error{Code: "ai_unavailable", Message: "503 on every attempt"},
		Attempts: 4, ProcessedAt: &at,
	})
	for name, ev := range map[string]pipeline.Event{"completed": assetEvent("u1", 1), "failed": failed} {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(v); err != nil {
			t.Errorf("%s event %s breaks the schema: %v", name, b, err)
		}
	}
	b, _ := json.Marshal(failed)
	if !strings.Contains(string(b), `"processedAt":"2026-01-02T02:04:05.000Z"`) {
		t.Errorf("processedAt not UTC with milliseconds: %s", b)
	}
}

// TestSchemaIsStrict makes sure the schema refuses what the contract
// forbids, so the tests that validate against it can fail.
func TestSchemaIsStrict(t *testing.T) {
	t.Parallel()
	sch := eventSchema(t)
	raw, err := os.ReadFile("../../api/asset-processed-event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Examples []map[string]any `json:"examples"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || len(doc.Examples) == 0 {
		t.Fatalf("schema examples: %v", err)
	}
	for i, ex := range doc.Examples {
		if err := sch.Validate(ex); err != nil {
			t.Errorf("example %d is invalid: %v", i, err)
		}
	}
	base := doc.Examples[0]
	for name, change := range map[string]func(m map[string]any){
		"extra field":            func(m map[string]any) { m["room"] = "user:u1" },
		"missing eventId":        func(m map[string]any) { delete(m, "eventId") },
		"missing error":          func(m map[string]any) { delete(m, "error") },
		"unknown status":         func(m map[string]any) { m["status"] = "draft" },
		"no milliseconds":        func(m map[string]any) { m["processedAt"] = "2026-11-29T01:02:03Z" },
		"nanoseconds":            func(m map[string]any) { m["processedAt"] = "2026-11-29T01:02:03.123456789Z" },
		"not a date":             func(m map[string]any) { m["processedAt"] = "2026-13-29T01:02:03.000Z" },
		"zero attempts":          func(m map[string]any) { m["attempts"] = 0 },
		"asset id not a ULID":    func(m map[string]any) { m["assetId"] = "asset-1" },
		"completed with error":   func(m map[string]any) { m["error"] = map[string]any{"code": "x", "message": "y"} },
		"failed without error":   func(m map[string]any) { m["status"] = "failed"; m["aiMetadata"] = nil },
		"metadata not an object": func(m map[string]any) { m["aiMetadata"] = "text" },
		"error with extra field": func(m map[string]any) {
			m["status"], m["aiMetadata"] = "failed", nil
			m["error"] = map[string]any{"code": "x", "message": "y", "stack": "z"}
		},
	} {
		m := make(map[string]any, len(base))
		for k, v := range base {
			m[k] = v
		}
		change(m)
		if err := sch.Validate(m); err == nil {
			t.Errorf("%s: schema accepts %v", name, m)
		}
	}
}
