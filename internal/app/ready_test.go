package app

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The space check reads the real file system: a directory with less room
// than asked for is not ready (here, by asking for more than any disk has).
func TestSpaceCheckReadsTheFileSystem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := spaceCheck(dir, 0)(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := spaceCheck(dir, math.MaxUint64)(context.Background())
	if err == nil || !strings.Contains(err.Error(), "bytes free") {
		t.Fatalf("a full file system passes: %v", err)
	}
	if err := spaceCheck(dir+"/missing", 0)(context.Background()); err == nil {
		t.Fatal("a missing directory passes")
	}
}

func TestThrottledRunsAtMostOncePerPeriod(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	boom := errors.New("boom")
	c := throttled(func(context.Context) error { runs.Add(1); return boom }, 50*time.Millisecond)
	for range 5 {
		if err := c(context.Background()); !errors.Is(err, boom) {
			t.Fatal(err)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("%d runs within the period, want 1", n)
	}
	time.Sleep(60 * time.Millisecond)
	c(context.Background())
	if n := runs.Load(); n != 2 {
		t.Fatalf("%d runs after the period, want 2", n)
	}
}

// klectr serve reports each dependency by name.
func TestServeReadyzNamesEachDependency(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	resp, b := s.do("GET", "/readyz", "", nil, "")
	var body struct {
		Status string
		Checks map[string]string
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &body) != nil || body.Status != "ready" {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	for _, name := range []string{"store", "queue", "bus", "blobs"} {
		if body.Checks[name] != "ok" {
			t.Errorf("check %q = %q: %s", name, body.Checks[name], b)
		}
	}
}
