package app

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/klectr/klectr/internal/httpapi"
)

// minFree is the free space below which a store on a local directory is not
// ready. SQLite keeps committing small writes into pages it already holds
// long after a larger write has failed with "database or disk is full"
// (measured on a full 2 MiB tmpfs: one-row updates went on succeeding while
// inserts failed), so a write probe alone keeps a full disk "ready"; the
// file system's own count does not.
const minFree = 1 << 20

// probeEvery bounds how often a check that writes (or is costly) runs:
// /readyz is unauthenticated, and each probe is a synced commit.
const probeEvery = time.Second

// spaceCheck fails when dir's file system has less than min bytes free for
// this process.
func spaceCheck(dir string, min uint64) func(context.Context) error {
	return func(context.Context) error {
		free, err := freeSpace(dir)
		if err != nil {
			return err
		}
		if free < min {
			return fmt.Errorf("%s: %d bytes free, below the %d this service needs to be ready", dir, free, min)
		}
		return nil
	}
}

// all runs checks in order and returns the first failure.
func all(checks ...func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if err := c(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

// throttled runs check at most once per every; calls in between get the
// last result. Concurrent callers wait for one run.
func throttled(check func(context.Context) error, every time.Duration) func(context.Context) error {
	var (
		mu   sync.Mutex
		at   time.Time
		last error
	)
	return func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if !at.IsZero() && time.Since(at) < every {
			return last
		}
		last = check(ctx)
		at = time.Now()
		return last
	}
}

// always is the check of a dependency that lives in the process (the
// in-process bus): ready whenever the process is.
func always(context.Context) error { return nil }

// readyChecks names each dependency for /readyz.
func readyChecks(store, queue, bus, blobs func(context.Context) error) []httpapi.Check {
	return []httpapi.Check{
		{Name: "store", Check: store},
		{Name: "queue", Check: queue},
		{Name: "bus", Check: bus},
		{Name: "blobs", Check: blobs},
	}
}
