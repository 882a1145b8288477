package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
)

func testAsset(t *testing.T, id string) (*asset.Asset, queue.Job) {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	a := &asset.Asset{ID: id, UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: ulid.Make().String(),
		ContentType: "image/png", Size: 10, SHA256: "00", Width: 1, Height: 1,
		BlobKey: "0123456789abcdef0123456789abcdef", CreatedAt: now, UpdatedAt: now}
	job, err := pipeline.NewJob(a, now)
	if err != nil {
		t.Fatal(err)
	}
	return a, job
}

// A group commit is all or nothing per request, never per group: one
// request that fails (a duplicate id) or whose client went away leaves the
// others of its group committed.
func TestIntakeGroupCommitIsolatesRequests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, _, err := config.Load("serve", []string{"-data-dir", t.TempDir()}, envOf(nil), io.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := openBackends(ctx, cfg, slog.New(slog.DiscardHandler), queueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	taken, takenJob := testAsset(t, ulid.Make().String())
	if err := b.intake.Submit(ctx, []*asset.Asset{taken}, []queue.Job{takenJob}); err != nil {
		t.Fatal(err)
	}

	const n = 40
	errs := make([]error, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		id := ulid.Make().String()
		if i%10 == 3 {
			id = taken.ID // fails: the asset exists
		}
		ids[i] = id
		a, job := testAsset(t, id)
		rctx := ctx
		if i%10 == 7 {
			c, cancel := context.WithCancel(ctx)
			cancel() // the client went away before its turn
			rctx = c
		}
		wg.Go(func() { errs[i] = b.intake.Submit(rctx, []*asset.Asset{a}, []queue.Job{job}) })
	}
	wg.Wait()

	stored := 0
	for i, err := range errs {
		_, gerr := b.store.Get(ctx, ids[i])
		switch i % 10 {
		case 3:
			if !errors.Is(err, asset.ErrDuplicate) {
				t.Errorf("request %d (duplicate id): %v", i, err)
			}
		case 7:
			if !errors.Is(err, context.Canceled) || !errors.Is(gerr, asset.ErrNotFound) {
				t.Errorf("request %d (cancelled): err %v, stored %v", i, err, gerr)
			}
		default:
			if err != nil || gerr != nil {
				t.Errorf("request %d: err %v, get %v", i, err, gerr)
			}
			stored++
		}
	}
	counts, err := b.queue.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts[queue.Pending] != stored+1 {
		t.Fatalf("%d pending jobs for %d stored assets (+1 before)", counts[queue.Pending], stored)
	}
}
