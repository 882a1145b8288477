package blob

import (
	"context"
	"fmt"
	"time"
)

// sweepBatch is how many keys Sweep asks inUse about at once.
const sweepBatch = 500

// TempRemover is a Store that keeps unfinished uploads apart from blobs
// (Disk's tmp directory, S3's incomplete multipart uploads); Sweep removes
// those started before its cutoff.
type TempRemover interface {
	RemoveTemp(ctx context.Context, olderThan time.Time) (removed int, err error)
}

// Sweep deletes the blobs written before olderThan that inUse does not
// report as referenced, and, when s is a TempRemover, the unfinished uploads
// begun before olderThan. It returns how many blobs and unfinished uploads it
// deleted.
//
// olderThan must lie further in the past than the longest possible upload
// (from the first byte Put reads until the asset referencing the blob is
// committed): a younger blob may belong to an upload still in progress.
//
// inUse receives up to 500 keys at a time and returns the set of those that
// an asset references; a key absent from the map is deleted. When inUse
// fails, Sweep stops and deletes nothing of that batch.
func Sweep(ctx context.Context, s Store, olderThan time.Time, inUse func(ctx context.Context, keys []string) (map[string]bool, error)) (deleted int, err error) {
	batch := make([]string, 0, sweepBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		used, err := inUse(ctx, batch)
		if err != nil {
			return fmt.Errorf("blob: sweep: which blobs are in use: %w", err)
		}
		var orphans []string
		for _, k := range batch {
			if !used[k] {
				orphans = append(orphans, k)
			}
		}
		batch = batch[:0]
		if err := s.Delete(ctx, orphans...); err != nil {
			return fmt.Errorf("blob: sweep: %w", err)
		}
		deleted += len(orphans)
		return nil
	}
	err = s.Walk(ctx, olderThan, func(key string) error {
		batch = append(batch, key)
		if len(batch) == sweepBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return deleted, err
	}
	if tr, ok := s.(TempRemover); ok {
		n, err := tr.RemoveTemp(ctx, olderThan)
		deleted += n
		if err != nil {
			return deleted, fmt.Errorf("blob: sweep: %w", err)
		}
	}
	return deleted, nil
}
