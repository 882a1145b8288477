package assettest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// testProcessingPages: only processing assets older than the cutoff, in id
// order, paged by afterID.
func testProcessingPages(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	var ids []string
	for i := range 5 {
		a := newAsset(fmt.Sprintf("p%02d", i), "u1", t0.Add(time.Duration(i)*time.Second))
		mustCreate(t, s, a)
		ids = append(ids, a.ID)
	}
	// p03 is final, p04 was updated after the cutoff.
	mustFinish(t, s, "p03", "job-p03", asset.Outcome{Status: asset.StatusDraft, Attempts: 1,
		ProcessedAt: t0.Add(10 * time.Second), EventID: "e3", AIMetadata: []byte(`{}`)})
	cutoff := t0.Add(4 * time.Second)

	var got []string
	after := ""
	for range 10 {
		page, err := s.Processing(ctx, cutoff, after, 2)
		if err != nil {
			t.Fatalf("Processing(after %q): %v", after, err)
		}
		if len(page) > 2 {
			t.Fatalf("Processing returned %d assets; limit was 2", len(page))
		}
		if len(page) == 0 {
			break
		}
		for _, a := range page {
			if a.Status != asset.StatusProcessing {
				t.Fatalf("Processing returned %s in status %s", a.ID, a.Status)
			}
			got = append(got, a.ID)
		}
		after = page[len(page)-1].ID
	}
	want := []string{"p00", "p01", "p02"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Processing pages = %v, want %v", got, want)
	}
	if _, err := s.Processing(ctx, cutoff, "", 0); err == nil {
		t.Errorf("Processing with limit 0: no error")
	}
}

// testBlobsInUse: exactly the referenced keys are reported.
func testBlobsInUse(t *testing.T, s asset.Store) {
	ctx := context.Background()
	mustCreate(t, s, newAsset("b1", "u1", baseTime()), newAsset("b2", "u2", baseTime()))
	used, err := s.BlobsInUse(ctx, []string{"blobs/b1", "blobs/b2", "blobs/none", ""})
	if err != nil {
		t.Fatalf("BlobsInUse: %v", err)
	}
	if !used["blobs/b1"] || !used["blobs/b2"] || used["blobs/none"] || used[""] || len(used) != 2 {
		t.Fatalf("BlobsInUse = %v, want blobs/b1 and blobs/b2 only", used)
	}
	if err := s.Delete(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	used, err = s.BlobsInUse(ctx, []string{"blobs/b1", "blobs/b2"})
	if err != nil || used["blobs/b1"] || !used["blobs/b2"] {
		t.Fatalf("after deleting b1: BlobsInUse = %v, %v; want blobs/b2 only", used, err)
	}
	if used, err := s.BlobsInUse(ctx, nil); err != nil || len(used) != 0 {
		t.Fatalf("BlobsInUse(nil) = %v, %v", used, err)
	}
}
