package mongostore

import (
	"context"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// TestWithDeadline: callers pass contexts with deadlines (HTTP requests,
// jobs); the driver may then send maxTimeMS, which FerretDB refuses on some
// commands.
func TestWithDeadline(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := testAsset("dl-1")
	steps := []struct {
		name string
		fn   func() error
	}{
		{"Create", func() error { return s.Create(ctx, a, testAsset("dl-2")) }},
		{"Create duplicate", func() error {
			if err := s.Create(ctx, testAsset("dl-3"), testAsset("dl-1")); err == nil {
				t.Error("duplicate Create succeeded")
			}
			_, err := s.Get(ctx, "dl-3")
			if err == nil {
				t.Error("dl-3 left behind")
			}
			return nil
		}},
		{"Get", func() error { _, err := s.Get(ctx, a.ID); return err }},
		{"List", func() error { _, err := s.List(ctx, "u1", asset.ListQuery{Limit: 1}); return err }},
		{"RecordAttempt", func() error { return s.RecordAttempt(ctx, a.ID, a.ProcessingJobID, 1, a.CreatedAt) }},
		{"Finish", func() error {
			_, err := s.Finish(ctx, a.ID, a.ProcessingJobID, asset.Outcome{Status: asset.StatusFailed, ProcessedAt: a.CreatedAt, EventID: "e"})
			return err
		}},
		{"Finish conflict", func() error {
			_, err := s.Finish(ctx, a.ID, a.ProcessingJobID, asset.Outcome{Status: asset.StatusFailed, ProcessedAt: a.CreatedAt, EventID: "e"})
			if err == nil {
				t.Error("second Finish succeeded")
			}
			return nil
		}},
		{"PendingEvents", func() error { _, err := s.PendingEvents(ctx, 10); return err }},
		{"EventSent", func() error { return s.EventSent(ctx, a.ID, "e", time.Now()) }},
		{"Reprocess", func() error { _, err := s.Reprocess(ctx, a.ID, "job-2", a.CreatedAt); return err }},
		{"Processing", func() error { _, err := s.Processing(ctx, time.Now(), "", 10); return err }},
		{"BlobsInUse", func() error { _, err := s.BlobsInUse(ctx, []string{a.BlobKey}); return err }},
		{"Delete", func() error { return s.Delete(ctx, a.ID) }},
		{"Ping", func() error { return s.Ping(ctx) }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			t.Errorf("%s with a deadline: %v", st.name, err)
		}
	}
}
