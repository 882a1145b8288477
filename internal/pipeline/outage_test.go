package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
	"github.com/klectr/klectr/internal/wire"
)

// aiService is an AI service that can go down in two ways: answering 503
// (without Retry-After), or gone, its port refusing connections.
type aiService struct {
	t     *testing.T
	addr  string
	mode  atomic.Int32 // aiUp, aiAnswers503 or aiGone
	calls atomic.Int64
	mu    sync.Mutex
	srv   *http.Server
}

const (
	aiUp = iota
	aiAnswers503
	aiGone
)

func newAIService(t *testing.T) *aiService {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &aiService{t: t, addr: ln.Addr().String()}
	s.serve(ln)
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.srv != nil {
			s.srv.Close()
		}
	})
	return s
}

func (s *aiService) serve(ln net.Listener) {
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		if s.mode.Load() == aiAnswers503 {
			answer(503, nil, `{"error":"overloaded"}`)(w, r, 0)
			return
		}
		answer(200, nil, okResult)(w, r, 0)
	})}
	go s.srv.Serve(ln)
}

// set switches the mode; aiGone closes the port (and every connection),
// leaving it refusing, and leaving aiGone listens on it again.
func (s *aiService) set(mode int32) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch old := s.mode.Swap(mode); {
	case mode == aiGone && old != aiGone:
		s.srv.Close()
		s.srv = nil
	case mode != aiGone && old == aiGone:
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			s.t.Fatalf("the AI service cannot listen on its port again: %v", err)
		}
		s.serve(ln)
	}
}

// syncBuffer is a log destination shared by goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// outage is one run: an embedded worker (River on SQLite, the SQLite asset
// store, the real AI client) working jobs while the AI service is down.
type outage struct {
	breaker     bool
	down        int32 // aiAnswers503 or aiGone
	length      time.Duration
	policy      queue.Policy
	probe       time.Duration // the breaker's ProbeInterval
	before      int           // jobs queued when the outage begins
	during      int           // jobs queued during the outage, evenly
	concurrency int
}

type outageFigures struct {
	jobs, dead, draft int
	attempts          map[int]int // assets by attempts used
	recoveryToDone    time.Duration
	callsDuring       int64 // AI requests made during the outage
	opened, closed    int   // breaker log lines
}

func (f outageFigures) String() string {
	return fmt.Sprintf("%d jobs: %d dead, %d draft; assets by attempts used %v; all final %v after recovery; %d AI requests during the outage; breaker opened %d, closed %d",
		f.jobs, f.dead, f.draft, f.attempts, f.recoveryToDone.Round(10*time.Millisecond), f.callsDuring, f.opened, f.closed)
}

func (o outage) run(t *testing.T) outageFigures {
	t.Helper()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := sqlitestore.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := blob.NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	image, err := os.ReadFile("../../testdata/images/valid/video-001.q50.420.jpeg")
	if err != nil {
		t.Fatal(err)
	}
	svc := newAIService(t)
	client, err := ai.NewClient(ai.ClientConfig{BaseURL: "http://" + svc.addr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var analyzer ai.Analyzer = client
	var breakerLog syncBuffer
	if o.breaker {
		analyzer = ai.NewBreaker(client, ai.BreakerConfig{ProbeInterval: o.probe,
			Logger: slog.New(slog.NewTextHandler(&breakerLog, nil))})
	}
	quiet := slog.New(slog.DiscardHandler)
	h := &pipeline.Handler{Store: store, Blobs: blobs, Analyzer: analyzer, Notifier: &notifier{}, Log: quiet,
		Now: time.Now, NewID: func() string { return ulid.Make().String() }}
	q, err := riverqueue.New(ctx, db, riverqueue.Config{Handler: h, Policy: o.policy, Concurrency: o.concurrency,
		JobTimeout: 30 * time.Second, RecoverOnStart: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		q.Stop(stop)
	})

	var ids []string
	add := func(n int) {
		t.Helper()
		for range n {
			key, err := blobs.Put(ctx, bytes.NewReader(image))
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			a := &asset.Asset{ID: ulid.Make().String(), UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: ulid.Make().String(),
				Filename: "card.jpg", ContentType: "image/jpeg", Size: int64(len(image)), SHA256: "00",
				Width: 150, Height: 103, BlobKey: key, CreatedAt: now, UpdatedAt: now}
			if err := store.Create(ctx, a); err != nil {
				t.Fatal(err)
			}
			job, err := wire.NewJob(context.Background(), a, now)
			if err != nil {
				t.Fatal(err)
			}
			if err := q.Enqueue(ctx, job); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, a.ID)
		}
	}

	svc.set(o.down)
	add(o.before)
	begin := time.Now()
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const steps = 10
	for i := 1; i <= steps; i++ {
		time.Sleep(time.Until(begin.Add(o.length * time.Duration(i) / (steps + 1))))
		add(o.during*i/steps - o.during*(i-1)/steps)
	}
	time.Sleep(time.Until(begin.Add(o.length)))
	f := outageFigures{jobs: len(ids), attempts: map[int]int{}, callsDuring: svc.calls.Load()}
	svc.set(aiUp)
	recovered := time.Now()

	deadline := recovered.Add(o.length + time.Minute)
	for {
		final := 0
		for _, id := range ids {
			a, err := store.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if a.Status != asset.StatusProcessing {
				final++
			}
		}
		if final == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d assets still processing %v after recovery", len(ids)-final, len(ids), time.Since(recovered))
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.recoveryToDone = time.Since(recovered)
	for _, id := range ids {
		a, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if a.Status == asset.StatusDraft {
			f.draft++
		}
		f.attempts[a.Attempts]++
	}
	counts, err := q.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.dead = counts[queue.Dead]
	f.opened = strings.Count(breakerLog.String(), "circuit breaker opened")
	f.closed = strings.Count(breakerLog.String(), "circuit breaker closed")
	return f
}

// The AI service down for longer than the retry schedule, under load, on
// the real embedded queue. Scaled down from 60 s: a 6 s outage with a
// 100 ms backoff and 3 retries (the schedule ends after about 0.7 s).
// Without the breaker every job queued before the outage ends dead (the
// "before" figure); with it none does, no asset spends more than one
// attempt on the outage, the breaker opens and closes once, and every job
// is done within seconds of recovery. Run with KLECTR_OUTAGE_MEASURE=1 for
// the full 60 s outage with the production retry policy.
func TestAIOutageBurnsNoRetries(t *testing.T) {
	t.Parallel()
	base := outage{length: 6 * time.Second, policy: queue.Policy{Retries: 3, Backoff: 100 * time.Millisecond},
		probe: ai.DefaultBreakerProbeInterval, before: 32, during: 16, concurrency: 16}
	for _, c := range []struct {
		name    string
		breaker bool
		down    int32
	}{
		{"without breaker/503", false, aiAnswers503},
		{"with breaker/503", true, aiAnswers503},
		{"with breaker/connection refused", true, aiGone},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			o := base
			o.breaker, o.down = c.breaker, c.down
			f := o.run(t)
			t.Logf("%v outage, %s: %v", o.length, c.name, f)
			checkOutage(t, o, f, 10*time.Second)
		})
	}
}

func checkOutage(t *testing.T, o outage, f outageFigures, recovery time.Duration) {
	t.Helper()
	if !o.breaker {
		if f.dead < o.before {
			t.Errorf("without the breaker %d jobs died; want at least the %d queued before the outage (it outlasts the retries)", f.dead, o.before)
		}
		return
	}
	if f.dead != 0 || f.draft != f.jobs {
		t.Errorf("%d jobs dead, %d of %d drafts; want none dead, all drafts", f.dead, f.draft, f.jobs)
	}
	if worst := slices.Max(slices.Collect(maps.Keys(f.attempts))); worst > 2 {
		t.Errorf("an asset used %d attempts; want at most 2 (one lost to the outage at most)", worst)
	}
	if f.recoveryToDone > recovery {
		t.Errorf("all jobs done %v after recovery, want within %v", f.recoveryToDone, recovery)
	}
	if f.opened != 1 || f.closed != 1 {
		t.Errorf("the breaker logged %d openings and %d closings, want 1 and 1", f.opened, f.closed)
	}
	if max := int64(o.length/o.probe) + int64(o.concurrency) + 5; f.callsDuring > max {
		t.Errorf("%d AI requests during the outage, want at most %d (the ones before it opened, then a probe per %v)", f.callsDuring, max, o.probe)
	}
}

// TestAIOutageMeasure is the figure: a 60 s outage under load with
// the production retry policy (3 retries after 2 s, 4 s, 8 s) and breaker
// defaults, before and after. It takes about three minutes, so it runs only
// when asked:
//
//	KLECTR_OUTAGE_MEASURE=1 go test -run TestAIOutageMeasure -v -timeout 10m ./internal/pipeline/
func TestAIOutageMeasure(t *testing.T) {
	if os.Getenv("KLECTR_OUTAGE_MEASURE") == "" {
		t.Skip("set KLECTR_OUTAGE_MEASURE=1 to measure a 60 s AI outage")
	}
	base := outage{length: 60 * time.Second, policy: queue.DefaultPolicy(), probe: ai.DefaultBreakerProbeInterval,
		before: 200, during: 200, concurrency: 16, down: aiAnswers503}
	for _, breaker := range []bool{false, true} {
		t.Run(fmt.Sprintf("breaker=%v", breaker), func(t *testing.T) {
			t.Parallel()
			o := base
			o.breaker = breaker
			f := o.run(t)
			t.Logf("%v outage, breaker %v: %v", o.length, breaker, f)
			checkOutage(t, o, f, 15*time.Second)
		})
	}
}
