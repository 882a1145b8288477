package riverqueue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// TestMeasure prints throughput and start latency with the production
// defaults (poll 200 ms, cooldown 5 ms, concurrency 16). It is a
// measurement, not a check, so it runs only when asked:
//
//	KLECTR_QUEUE_MEASURE=1 go test -run TestMeasure -v ./internal/queue/riverqueue/
func TestMeasure(t *testing.T) {
	if os.Getenv("KLECTR_QUEUE_MEASURE") == "" {
		t.Skip("set KLECTR_QUEUE_MEASURE=1 to measure throughput and start latency")
	}
	for _, c := range []struct {
		name    string
		work    time.Duration
		n       int
		preload bool
	}{
		{"instant handler, jobs enqueued beforehand", 0, 3000, true},
		{"instant handler, enqueued one per call while working", 0, 3000, false},
		{"50ms handler, jobs enqueued beforehand", 50 * time.Millisecond, 1500, true},
		{"50ms handler, enqueued one per call while working", 50 * time.Millisecond, 1500, false},
	} {
		rate := throughput(t, c.work, c.n, c.preload)
		t.Logf("throughput, %s, concurrency 16: %d jobs in %.2fs = %.0f jobs/s", c.name, c.n, float64(c.n)/rate, rate)
	}
	for _, tx := range []bool{false, true} {
		lat := startLatency(t, 300, tx)
		how := "Enqueue"
		if tx {
			how = "EnqueueTx+commit"
		}
		t.Logf("start latency (%s returned → handler started), %d samples: p50 %v, p90 %v, p99 %v, max %v",
			how, len(lat), pct(lat, 50), pct(lat, 90), pct(lat, 99), lat[len(lat)-1])
	}
}

func measureDB(t testing.TB) *sqlitedb.DB {
	t.Helper()
	db, err := sqlitedb.Open(context.Background(), t.TempDir()+"/measure.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func payload(id string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"jobId": id, "assetId": id, "userId": "u1", "blobKey": "ab/" + id, "contentType": "image/jpeg", "size": 123456, "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"})
	return b
}

// throughput returns jobs/s from the first enqueue (or from Start, when
// preloaded) until every job is recorded completed.
func throughput(t *testing.T, work time.Duration, n int, preload bool) float64 {
	t.Helper()
	db := measureDB(t)
	var handled atomic.Int64
	allHandled := make(chan struct{})
	q := newQueue(t, db, riverqueue.Config{Concurrency: 16, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		if work > 0 {
			time.Sleep(work) // stands in for the AI call
		}
		if handled.Add(1) == int64(n) {
			close(allHandled)
		}
		return nil
	})})
	jobs := make([]queue.Job, n)
	for i := range jobs {
		id := ulid.Make().String()
		jobs[i] = queue.Job{ID: id, Queue: queue.AIProcessing, Payload: payload(id)}
	}
	if preload {
		for chunk := range slices.Chunk(jobs, 500) {
			if err := q.Enqueue(t.Context(), chunk...); err != nil {
				t.Fatal(err)
			}
		}
	}
	start := time.Now()
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !preload {
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := g; i < n; i += 4 {
					if err := q.Enqueue(t.Context(), jobs[i]); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	select {
	case <-allHandled:
	case <-time.After(5 * time.Minute):
		t.Fatalf("only %d of %d jobs handled after 5 minutes", handled.Load(), n)
	}
	// Then until the last completions are recorded; Counts scans the table,
	// so it is not polled while the jobs run.
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := q.Counts(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if c[queue.Completed] == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("completions not recorded a minute after the last handler: %v", c)
		}
		time.Sleep(time.Millisecond)
	}
	return float64(n) / time.Since(start).Seconds()
}

// startLatency enqueues one job at a time into an idle queue, at random
// moments relative to River's poll, and measures until its handler starts.
func startLatency(t *testing.T, samples int, inTx bool) []time.Duration {
	t.Helper()
	db := measureDB(t)
	started := make(chan time.Time, 1)
	finished := make(chan struct{}, 1)
	q := newQueue(t, db, riverqueue.Config{Concurrency: 16, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		started <- time.Now()
		finished <- struct{}{}
		return nil
	})})
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	lat := make([]time.Duration, 0, samples)
	for range samples {
		time.Sleep(time.Duration(rand.IntN(250)) * time.Millisecond)
		id := ulid.Make().String()
		job := queue.Job{ID: id, Queue: queue.AIProcessing, Payload: payload(id)}
		var err error
		if inTx {
			err = enqueueInTx(t.Context(), db, q, job)
		} else {
			err = q.Enqueue(t.Context(), job)
		}
		if err != nil {
			t.Fatal(err)
		}
		enqueued := time.Now()
		select {
		case s := <-started:
			lat = append(lat, s.Sub(enqueued))
		case <-time.After(10 * time.Second):
			t.Fatal("a job did not start within 10 s")
		}
		<-finished
	}
	slices.Sort(lat)
	return lat
}

func enqueueInTx(ctx context.Context, db *sqlitedb.DB, q *riverqueue.Queue, job queue.Job) error {
	tx, err := db.Write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := q.EnqueueTx(ctx, tx, job); err != nil {
		return fmt.Errorf("EnqueueTx: %w", err)
	}
	return tx.Commit()
}

func pct(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// BenchmarkEnqueueTx is the intake's enqueue: one transaction per op holding
// the jobs of 50 uploads, from 1,000 users in turn, committed
// (synchronous=FULL). Nothing works the jobs, so the queue grows by 50 per op.
//
//	go test -run '^$' -bench EnqueueTx -benchtime 200x ./internal/queue/riverqueue/
func BenchmarkEnqueueTx(b *testing.B) {
	db := measureDB(b)
	q := newQueue(b, db, riverqueue.Config{})
	const perTx = 50
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		jobs := make([]queue.Job, perTx)
		for i := range jobs {
			id := ulid.Make().String()
			jobs[i] = queue.Job{ID: id, Queue: queue.AIProcessing, Group: fmt.Sprintf("user-%d", n%1000), Payload: payload(id)}
			n++
		}
		tx, err := db.Write.BeginTx(b.Context(), nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := q.EnqueueTx(b.Context(), tx, jobs...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*perTx), "µs/job")
}
