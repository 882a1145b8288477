package redisqueue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/redisqueue"
	"github.com/klectr/klectr/internal/testenv"
)

func job(q string) queue.Job {
	id := ulid.Make().String()
	return queue.Job{ID: id, Queue: q, Payload: []byte(`{"assetId":"` + id + `"}`)}
}

func waitState(t *testing.T, q *redisqueue.Queue, id string, state queue.State) queue.Info {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := q.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if info.State == state {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s, want %s", id, info.State, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Re-enqueueing a job is safe in every state: a reconciler may do it
// whenever Known says nothing, or blindly.
func TestReenqueueIsDuplicateInEveryStateAndKnownSaysSo(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	ctx := t.Context()
	policy := queue.Policy{Retries: 0, Backoff: time.Millisecond}
	q := open(t, redisqueue.Config{URL: url, Policy: policy,
		Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
			if strings.Contains(string(job.Payload), "fail") {
				return errors.New("boom")
			}
			return nil
		})})
	api := open(t, redisqueue.Config{URL: url, Policy: policy})

	pending, done, dead := job(queue.AIProcessing), job(queue.AIProcessing), job(queue.AIProcessing)
	dead.Payload = []byte(`"fail"`)
	other := job("thumbnails") // a queue this worker does not work
	if err := api.Enqueue(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := api.Enqueue(ctx, done, dead); err != nil {
		t.Fatal(err)
	}
	waitState(t, api, done.ID, queue.Completed)
	waitState(t, api, dead.ID, queue.Dead)
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := api.Enqueue(ctx, pending); err != nil {
		t.Fatal(err)
	}
	for name, j := range map[string]queue.Job{"pending": pending, "completed": done, "dead": dead, "in another queue": other} {
		if known, err := api.Known(ctx, j.ID); err != nil || !known {
			t.Errorf("Known(%s job) = %v, %v; want true", name, known, err)
		}
		again := j
		again.Queue = queue.AIProcessing
		if err := api.Enqueue(ctx, again); !errors.Is(err, queue.ErrDuplicate) {
			t.Errorf("Enqueue of a %s job's ID again: %v, want ErrDuplicate", name, err)
		}
	}
	if known, err := api.Known(ctx, "01NOSUCHJOB0000000000000000"); err != nil || known {
		t.Errorf("Known(unknown) = %v, %v; want false", known, err)
	}
	if err := api.Delete(ctx, dead.ID); err != nil {
		t.Fatal(err)
	}
	if known, _ := api.Known(ctx, dead.ID); known {
		t.Errorf("Known after Delete = true")
	}
	if err := api.Enqueue(ctx, dead); err != nil {
		t.Errorf("Enqueue after Delete: %v", err)
	}
}

// Dead jobs are kept by this package, not in asynq's archive, which trims
// itself to 10,000 tasks and 90 days.
func TestDeadJobsAreKeptOutsideAsynqArchive(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	q := open(t, redisqueue.Config{URL: url, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		return queue.Permanent(errors.New("undecodable image"))
	})})
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	j := job(queue.AIProcessing)
	if err := q.Enqueue(t.Context(), j); err != nil {
		t.Fatal(err)
	}
	info := waitState(t, q, j.ID, queue.Dead)
	if info.LastError() != "undecodable image" {
		t.Errorf("dead job's error = %q", info.LastError())
	}
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	qi, err := asynq.NewInspectorFromRedisClient(rdb).GetQueueInfo(queue.AIProcessing)
	if err != nil {
		t.Fatal(err)
	}
	if qi.Archived != 0 || qi.Size != 0 {
		t.Errorf("asynq's queue holds %d tasks, %d archived; want none", qi.Size, qi.Archived)
	}
}

func TestNewFailsFastWhenRedisIsUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = redisqueue.New(ctx, redisqueue.Config{URL: "redis://:s3cret@" + addr + "/2"})
	if err == nil {
		t.Fatal("New succeeded with no Redis")
	}
	if !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q should name %s and not the password", err, addr)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("New took %v to fail", took)
	}
	if _, err := redisqueue.New(ctx, redisqueue.Config{URL: "http://:s3cret@x"}); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("New with a bad URL: %v", err)
	}
}

func TestCheckPersistence(t *testing.T) {
	t.Parallel()
	// The test Redis runs with AOF and no eviction.
	q := open(t, redisqueue.Config{URL: testenv.RedisURL(t)})
	if w, err := q.CheckPersistence(t.Context()); err != nil || len(w) != 0 {
		t.Errorf("CheckPersistence on a safe Redis = %q, %v; want none", w, err)
	}

	bin := os.Getenv("KLECTR_TEST_REDIS_BIN")
	if bin == "" {
		t.Skip("set KLECTR_TEST_REDIS_BIN to check an unsafe Redis")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--maxmemory-policy", "allkeys-lru", "--dir", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	url := fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	var unsafe *redisqueue.Queue
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		unsafe, err = redisqueue.New(ctx, redisqueue.Config{URL: url})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("own redis-server did not start: %v", err)
		}
	}
	defer unsafe.Close()
	w, err := unsafe.CheckPersistence(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("warnings: %q", w)
	if len(w) != 2 || !strings.Contains(w[0], "appendonly") || !strings.Contains(w[1], "maxmemory-policy") || !strings.Contains(w[1], "allkeys-lru") {
		t.Errorf("warnings = %q; want one naming appendonly, one naming maxmemory-policy allkeys-lru", w)
	}
}

// Stop's cancellation does not count: a job interrupted on its last
// attempt waits again instead of going dead (asynq alone would archive it).
func TestStopInterruptingLastAttemptLeavesJobPending(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	policy := queue.Policy{Retries: 0, Backoff: time.Millisecond}
	started := make(chan struct{}, 1)
	b := open(t, redisqueue.Config{URL: url, Policy: policy, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		started <- struct{}{}
		<-ctx.Done()
		return fmt.Errorf("analysis: %w", ctx.Err())
	})})
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	j := job(queue.AIProcessing)
	if err := b.Enqueue(t.Context(), j); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not start")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := b.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	info, err := b.Get(t.Context(), j.ID)
	if err != nil || info.State != queue.Pending || info.Attempt != 0 || len(info.Errors) != 0 {
		t.Fatalf("interrupted job = %+v, %v; want pending, attempt 0, no error", info, err)
	}
	ran := make(chan int, 1)
	again := open(t, redisqueue.Config{URL: url, Policy: policy, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- job.Attempt
		return nil
	})})
	if err := again.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-ran:
		if a != 1 {
			t.Errorf("the interrupted job ran as attempt %d, want 1", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the interrupted job did not run after a restart")
	}
	waitState(t, again, j.ID, queue.Completed)
}
