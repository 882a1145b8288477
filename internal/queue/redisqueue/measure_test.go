package redisqueue_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/redisqueue"
	"github.com/klectr/klectr/internal/testenv"
)

// TestMeasure prints throughput and start latency with the production
// defaults (poll 100 ms, concurrency 16). It is a measurement, not a check,
// so it runs only when asked:
//
//	KLECTR_QUEUE_MEASURE=1 go test -run 'TestMeasure$' -v ./internal/queue/redisqueue/
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
		{"50ms handler, jobs enqueued beforehand", 50 * time.Millisecond, 1500, true},
		{"50ms handler, enqueued one per call while working", 50 * time.Millisecond, 1500, false},
	} {
		rate := throughput(t, c.work, c.n, c.preload)
		t.Logf("throughput, %s, concurrency 16: %d jobs in %.2fs = %.0f jobs/s", c.name, c.n, float64(c.n)/rate, rate)
	}
	lat := startLatency(t, 200)
	t.Logf("start latency (Enqueue returned → handler started), %d samples: p50 %v, p90 %v, p99 %v, max %v",
		len(lat), pct(lat, 50), pct(lat, 90), pct(lat, 99), lat[len(lat)-1])
}

func payload(id string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"jobId": id, "assetId": id, "userId": "u1", "blobKey": "ab/" + id, "contentType": "image/jpeg", "size": 123456, "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"})
	return b
}

func newJobs(n int) []queue.Job {
	jobs := make([]queue.Job, n)
	for i := range jobs {
		id := ulid.Make().String()
		jobs[i] = queue.Job{ID: id, Queue: queue.AIProcessing, Payload: payload(id)}
	}
	return jobs
}

// throughput returns jobs/s from Start (preloaded) or the first enqueue
// until every job is recorded completed.
func throughput(t *testing.T, work time.Duration, n int, preload bool) float64 {
	t.Helper()
	var handled atomic.Int64
	allHandled := make(chan struct{})
	q := open(t, redisqueue.Config{URL: testenv.RedisURL(t), Concurrency: 16, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		if work > 0 {
			time.Sleep(work) // stands in for the AI call
		}
		if handled.Add(1) == int64(n) {
			close(allHandled)
		}
		return nil
	})})
	jobs := newJobs(n)
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
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
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
	}
	rate := float64(n) / time.Since(start).Seconds()
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	return rate
}

// startLatency enqueues one job at a time into an idle queue, at random
// moments relative to the poll, and measures until its handler starts.
func startLatency(t *testing.T, samples int) []time.Duration {
	t.Helper()
	started := make(chan time.Time, 1)
	q := open(t, redisqueue.Config{URL: testenv.RedisURL(t), Concurrency: 16, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		started <- time.Now()
		return nil
	})})
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	lat := make([]time.Duration, 0, samples)
	for _, job := range newJobs(samples) {
		time.Sleep(time.Duration(rand.IntN(250)) * time.Millisecond)
		if err := q.Enqueue(t.Context(), job); err != nil {
			t.Fatal(err)
		}
		enqueued := time.Now()
		select {
		case s := <-started:
			lat = append(lat, s.Sub(enqueued))
		case <-time.After(10 * time.Second):
			t.Fatal("a job did not start within 10 s")
		}
	}
	slices.Sort(lat)
	return lat
}

func pct(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// crashChildEnv names the Redis database of the crash child.
const crashChildEnv = "KLECTR_REDISQUEUE_CRASH_CHILD_URL"

// TestMeasureCrashRedelivery measures how long asynq takes to run again
// the job of a worker killed with SIGKILL mid-run, when another worker
// (without RecoverOnStart) is running: asynq's lease recovery.
//
//	KLECTR_QUEUE_MEASURE=1 go test -run TestMeasureCrashRedelivery -v ./internal/queue/redisqueue/
func TestMeasureCrashRedelivery(t *testing.T) {
	if url := os.Getenv(crashChildEnv); url != "" {
		crashChild(t, url)
		return
	}
	if os.Getenv("KLECTR_QUEUE_MEASURE") == "" {
		t.Skip("set KLECTR_QUEUE_MEASURE=1 to measure crash redelivery (takes up to 2 minutes)")
	}
	url := testenv.RedisURL(t)
	ran := make(chan *queue.Job, 1)
	survivor := open(t, redisqueue.Config{URL: url, Queues: []string{"crash"}, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- job
		return nil
	})})
	j := queue.Job{ID: ulid.Make().String(), Queue: "crash", Payload: []byte(`{}`)}

	child := exec.Command(os.Args[0], "-test.run=^TestMeasureCrashRedelivery$", "-test.count=1", "-test.timeout=5m")
	child.Env = append(os.Environ(), crashChildEnv+"="+url)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	running := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "crash child running "); ok {
				running <- id
			}
		}
	}()
	// The child works queue "crash" alone until it has taken the job.
	if err := survivor.Enqueue(t.Context(), j); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-running:
		if id != j.ID {
			t.Fatalf("child ran %s", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the child did not start the job")
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	child.Wait()
	if err := survivor.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case again := <-ran:
		t.Logf("the job of a worker killed mid-run ran again %v after the kill, as attempt %d", time.Since(killed).Round(100*time.Millisecond), again.Attempt)
	case <-time.After(3 * time.Minute):
		t.Fatal("the job did not run again within 3 minutes")
	}
}

func crashChild(t *testing.T, url string) {
	q := open(t, redisqueue.Config{URL: url, Queues: []string{"crash"}, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		fmt.Printf("crash child running %s\n", job.ID)
		select {} // until SIGKILL
	})})
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Minute)
	t.Fatal("crash child: not killed")
}
