package redisqueue

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/testenv"
)

// newQueue opens a Queue over a database of the test's own and closes it
// when the test ends.
func newQueue(t *testing.T, url string, cfg Config) *Queue {
	t.Helper()
	cfg.URL = url
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	q, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return q
}

func newJob() queue.Job {
	id := ulid.Make().String()
	return queue.Job{ID: id, Queue: queue.AIProcessing, Payload: json.RawMessage(`{"assetId":"` + id + `"}`)}
}

// The messages this package writes are read by asynq as meant, and the
// ones asynq writes are read by this package.
func TestMessageMatchesAsynq(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	q := newQueue(t, url, Config{Policy: queue.Policy{Retries: 2, Backoff: time.Second}, CompletedRetention: time.Hour})
	insp := asynq.NewInspectorFromRedisClient(q.rdb)

	job := newJob()
	job.EnqueuedAt = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := q.Enqueue(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	ti, err := insp.GetTaskInfo(job.Queue, job.ID)
	if err != nil {
		t.Fatalf("asynq cannot read the task: %v", err)
	}
	env, err := decodeEnvelope(job.ID, ti.Payload)
	if err != nil || !slices.Equal(env.Payload, job.Payload) || !env.EnqueuedAt.Equal(job.EnqueuedAt) || env.MaxAttempts != 3 {
		t.Errorf("asynq sees payload %s (%v), want an envelope of %s, %v, 3 attempts", ti.Payload, err, job.Payload, job.EnqueuedAt)
	}
	if ti.ID != job.ID || ti.Queue != job.Queue || ti.Type != taskType || ti.State != asynq.TaskStatePending ||
		ti.MaxRetry != asynqRetryLimit || ti.Retried != 0 || ti.Retention != time.Hour || ti.Timeout != asynqTimeout {
		t.Errorf("asynq sees %+v", ti)
	}

	// The other way: a task written by asynq's client, retried once.
	other := newJob()
	m := taskMessage{Payload: []byte(`{"payload":{"x":1},"enqueuedAt":"2026-01-02T03:04:05Z","maxAttempts":5}`)}
	_, err = asynq.NewClientFromRedisClient(q.rdb).Enqueue(asynq.NewTask(taskType, m.Payload),
		asynq.TaskID(other.ID), asynq.Queue(other.Queue), asynq.MaxRetry(7), asynq.Retention(90*time.Second), asynq.Timeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := q.rdb.HGet(t.Context(), taskKey(other.Queue, other.ID), "msg").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeTaskMessage(raw)
	if err != nil {
		t.Fatalf("decode asynq's message: %v", err)
	}
	want := taskMessage{Type: taskType, Payload: m.Payload, ID: other.ID, Queue: other.Queue, Retry: 7, Timeout: 60, Retention: 90}
	if got.Type != want.Type || string(got.Payload) != string(want.Payload) || got.ID != want.ID || got.Queue != want.Queue ||
		got.Retry != want.Retry || got.Timeout != want.Timeout || got.Retention != want.Retention || got.Retried != 0 {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
	info, err := q.Get(t.Context(), other.ID)
	if err != nil || info.State != queue.Pending || info.MaxAttempts != 5 || string(info.Payload) != `{"x":1}` {
		t.Errorf("Get of asynq's task = %+v, %v", info, err)
	}
	if _, err := decodeTaskMessage([]byte{0x12, 0x05, 'a'}); err == nil {
		t.Errorf("a truncated message decoded")
	}
}

// setRetried makes a pending job look as asynq leaves it after its
// recoverer retried it n times: the lost runs counted, no error recorded.
func setRetried(t *testing.T, rdb *redis.Client, job queue.Job, n int64) {
	t.Helper()
	key := taskKey(job.Queue, job.ID)
	raw, err := rdb.HGet(t.Context(), key, "msg").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeTaskMessage(raw)
	if err != nil {
		t.Fatal(err)
	}
	m.Retried = n
	m.ErrorMsg = asynq.ErrLeaseExpired.Error()
	if err := rdb.HSet(t.Context(), key, "msg", m.encode()).Err(); err != nil {
		t.Fatal(err)
	}
}

// An attempt whose worker was lost has no error of its own; the next
// attempt records one, so Errors keeps one entry per failed attempt.
func TestLostAttemptIsRecorded(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	ran := make(chan int, 4)
	q := newQueue(t, url, Config{Policy: queue.Policy{Retries: 3, Backoff: time.Millisecond}, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- job.Attempt
		if job.Attempt == 2 {
			return errors.New("ai: 503")
		}
		return nil
	})})
	job := newJob()
	if err := q.Enqueue(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	setRetried(t, q.rdb, job, 1)
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	for want := 2; want <= 3; want++ {
		select {
		case a := <-ran:
			if a != want {
				t.Fatalf("handler ran attempt %d, want %d", a, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("attempt %d did not run", want)
		}
	}
	info := waitFor(t, q, job.ID, queue.Completed)
	if len(info.Errors) != 2 || !strings.HasPrefix(info.Errors[0], "attempt 1: the worker was lost") || info.Errors[1] != "ai: 503" || info.Attempt != 3 {
		t.Errorf("Info = attempt %d, errors %q; want 3, [attempt 1: the worker was lost… ai: 503]", info.Attempt, info.Errors)
	}
}

// A job whose worker is lost on its last attempt ends dead when asynq
// delivers it again, without running: a job that kills its worker every
// time cannot loop.
func TestLostLastAttemptEndsDead(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	ran := make(chan struct{}, 1)
	q := newQueue(t, url, Config{Policy: queue.Policy{Retries: 1, Backoff: time.Millisecond}, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- struct{}{}
		return nil
	})})
	job := newJob()
	if err := q.Enqueue(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	setRetried(t, q.rdb, job, 2) // both attempts lost
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, q, job.ID, queue.Dead)
	if info.Attempt != 2 || info.MaxAttempts != 2 || len(info.Errors) != 2 || info.FinishedAt == nil {
		t.Errorf("dead Info = attempt %d of %d, errors %q, finished %v; want 2 of 2, two lost attempts, set", info.Attempt, info.MaxAttempts, info.Errors, info.FinishedAt)
	}
	select {
	case <-ran:
		t.Errorf("the handler ran a delivery beyond the last attempt")
	default:
	}
	if n, _ := q.rdb.Exists(t.Context(), taskKey(job.Queue, job.ID)).Result(); n != 0 {
		t.Errorf("asynq still holds the dead job's task")
	}
}

// A worker lost between writing a job's dead record and asynq's deletion
// leaves both; the next delivery (after asynq's lease recovery) only
// finishes the deletion.
func TestDeadRecordFinishesDeletion(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	ran := make(chan struct{}, 1)
	q := newQueue(t, url, Config{Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- struct{}{}
		return nil
	})})
	job := newJob()
	if err := q.Enqueue(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	raw, _ := q.rdb.HGet(t.Context(), taskKey(job.Queue, job.ID), "msg").Bytes()
	m, _ := decodeTaskMessage(raw)
	if err := markDeadScript.Run(t.Context(), q.rdb, []string{taskKey(job.Queue, job.ID), deadKey(job.ID), deadSetKey},
		"bad image", job.ID, 1, job.Queue, string(m.Payload), 1, time.Now().UnixNano()).Err(); err != nil {
		t.Fatal(err)
	}
	setRetried(t, q.rdb, job, 1) // as asynq's recoverer leaves it
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := q.rdb.Exists(t.Context(), taskKey(job.Queue, job.ID)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the task of a dead job was not deleted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-ran:
		t.Errorf("the handler ran a dead job")
	default:
	}
	info, err := q.Get(t.Context(), job.ID)
	if err != nil || info.State != queue.Dead || !slices.Equal(info.Errors, []string{"bad image"}) {
		t.Errorf("Get = %+v, %v; want dead with its error", info, err)
	}
}

func TestRetryDelayRoundsUpToSecond(t *testing.T) {
	q := &Queue{cfg: Config{Policy: queue.Policy{Retries: 3, Backoff: 10 * time.Millisecond}}}
	for _, c := range []struct {
		err error
		min time.Duration
	}{
		{errors.New("x"), 8 * time.Millisecond},
		{queue.RetryAfter(errors.New("429"), 1500*time.Millisecond), 1500 * time.Millisecond},
		{queue.RetryAfter(errors.New("429"), 2*time.Second), 2 * time.Second},
	} {
		before := time.Now()
		d := q.retryDelay(0, c.err, nil)
		at := time.Now().Add(d)
		if d < c.min || at.Sub(before) > c.min+time.Second+50*time.Millisecond {
			t.Errorf("delay for %v = %v, want at least %v and less than a second more", c.err, d, c.min)
		}
		if frac := at.Sub(at.Truncate(time.Second)); frac > 50*time.Millisecond {
			t.Errorf("delay for %v ends %v past a whole second; asynq would run it early", c.err, frac)
		}
	}
	if d := q.retryDelay(0, &interrupted{err: context.Canceled}, nil); d != 0 {
		t.Errorf("an interrupted job waits %v, want 0", d)
	}
}

// waitFor polls until job id is in state.
func waitFor(t *testing.T, q *Queue, id string, state queue.State) queue.Info {
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
