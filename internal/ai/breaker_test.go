package ai_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/klectr/klectr/internal/ai"
)

// fakeClock is the breaker's injected clock; tests move it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// service is a fake AI service behind the breaker: it answers with next's
// error (nil: success) and counts the requests it got.
type service struct {
	mu    sync.Mutex
	err   error
	calls int
	gate  chan struct{} // when set, each request waits for a value
}

func (s *service) set(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *service) sent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *service) Analyze(ctx context.Context, img ai.Image) (json.RawMessage, error) {
	s.mu.Lock()
	s.calls++
	err, gate := s.err, s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-time.After(10 * time.Second):
			return nil, errors.New("test: gate never opened")
		}
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(`{"ok":true}`), nil
}

var (
	down     = &ai.Error{Code: ai.CodeUnavailable, Message: "the AI service is unavailable (HTTP 503)"}
	timedOut = &ai.Error{Code: ai.CodeTimeout, Message: "the AI service did not answer in time"}
	rejected = &ai.Error{Code: ai.CodeRejected, Message: "the AI service refused the image (HTTP 400)", Permanent: true}
)

type breakerEnv struct {
	svc   *service
	clock *fakeClock
	b     *ai.Breaker
	logs  *bytes.Buffer
	logMu *sync.Mutex
}

const interval = 2 * time.Second

func newBreaker(t *testing.T) *breakerEnv {
	t.Helper()
	e := &breakerEnv{svc: &service{}, clock: &fakeClock{now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)},
		logs: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	e.b = ai.NewBreaker(e.svc, ai.BreakerConfig{Threshold: 5, ProbeInterval: interval, Now: e.clock.Now,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{e.logs, e.logMu}, nil))})
	return e
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (e *breakerEnv) log() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

func (e *breakerEnv) analyze() error {
	_, err := e.b.Analyze(context.Background(), ai.Image{AssetID: "a1", Body: strings.NewReader("x")})
	return err
}

// open drives the breaker open with Threshold outage failures.
func (e *breakerEnv) open(t *testing.T) {
	t.Helper()
	e.svc.set(down)
	for range 5 {
		e.analyze()
	}
	if s := e.b.State(); s.State != ai.BreakerOpen {
		t.Fatalf("after 5 outage failures the breaker is %s, want open", s.State)
	}
}

func TestBreakerOpensAfterThresholdOutageFailures(t *testing.T) {
	t.Parallel()
	e := newBreaker(t)
	e.svc.set(down)
	for i := 1; i <= 4; i++ {
		err := e.analyze()
		if _, open := ai.BreakerWait(err); open || !errors.Is(err, down) {
			t.Fatalf("failure %d = %v; want the service's error, counted as the job's attempt", i, err)
		}
		if s := e.b.State(); s.State != ai.BreakerClosed || s.ConsecutiveFailures != i {
			t.Fatalf("after failure %d: %+v, want closed with %d failures", i, s, i)
		}
	}
	e.svc.set(timedOut) // timeouts count like the service being down
	err := e.analyze()
	if w, open := ai.BreakerWait(err); !open || w != interval || !errors.Is(err, timedOut) {
		t.Fatalf("failure 5 = %v; want an *OpenError waiting %v that keeps the cause", err, interval)
	}
	s := e.b.State()
	if s.State != ai.BreakerOpen || !s.Since.Equal(e.clock.Now()) || !s.NextProbe.Equal(e.clock.Now().Add(interval)) || s.ConsecutiveFailures != 5 {
		t.Fatalf("State = %+v; want open since now, next probe in %v, 5 failures", s, interval)
	}
	// Open: nothing is sent, and the wait shrinks with the clock.
	e.clock.Add(500 * time.Millisecond)
	err = e.analyze()
	if w, open := ai.BreakerWait(err); !open || w != interval-500*time.Millisecond || ai.Code(err) != ai.CodeUnavailable {
		t.Fatalf("while open: %v; want an ai_unavailable *OpenError waiting 1.5s", err)
	}
	if w := e.b.Wait(); w != 1500*time.Millisecond {
		t.Errorf("Wait() = %v, want 1.5s", w)
	}
	if n := e.svc.sent(); n != 5 {
		t.Errorf("the service got %d requests, want 5: none while open", n)
	}
	if n := strings.Count(e.log(), "circuit breaker opened"); n != 1 {
		t.Errorf("logged the opening %d times, want once:\n%s", n, e.log())
	}
}

func TestBreakerProbesOnceAnIntervalOneAtATime(t *testing.T) {
	t.Parallel()
	e := newBreaker(t)
	e.open(t)
	before := e.svc.sent()

	// A minute of outage with a job asking every 100 ms: one probe per
	// interval, each failing and re-opening the breaker.
	var notSent int
	for range 600 {
		e.clock.Add(100 * time.Millisecond)
		if err := e.analyze(); err != nil {
			if _, open := ai.BreakerWait(err); !open {
				t.Fatalf("during the outage Analyze = %v; want only *OpenError (no attempt counted)", err)
			}
			notSent++
		}
	}
	probes := e.svc.sent() - before
	if probes != 30 || notSent != 600 {
		t.Errorf("a 60 s outage sent %d probes (not sent: %d of 600); want 30, one per %v", probes, notSent, interval)
	}
	if s := e.b.State(); s.Deferred != uint64(600-probes) || s.Transitions[ai.BreakerOpen] != 31 || s.Transitions[ai.BreakerHalfOpen] != 30 {
		t.Errorf("State = %+v; want %d deferred, 31 openings (1 + a failed probe each), 30 half-opens", s, 600-probes)
	}
	if n := strings.Count(e.log(), "circuit breaker opened"); n != 1 {
		t.Errorf("logged the opening %d times in one outage, want once", n)
	}

	// Half-open: the probe is in flight; every other request waits.
	e.svc.mu.Lock()
	e.svc.gate = make(chan struct{})
	e.svc.mu.Unlock()
	e.svc.set(nil)
	e.clock.Add(interval)
	probe := make(chan error, 1)
	go func() { probe <- e.analyze() }()
	deadline := time.Now().Add(10 * time.Second)
	for e.svc.sent() == before+probes {
		if time.Now().After(deadline) {
			t.Fatal("the probe never reached the service")
		}
		time.Sleep(time.Millisecond)
	}
	if s := e.b.State(); s.State != ai.BreakerHalfOpen {
		t.Fatalf("with the probe in flight the breaker is %s, want half-open", s.State)
	}
	for range 10 {
		err := e.analyze()
		if w, open := ai.BreakerWait(err); !open || w != interval {
			t.Fatalf("beside the probe: %v; want an *OpenError waiting %v", err, interval)
		}
	}
	if w := e.b.Wait(); w != interval {
		t.Errorf("Wait() with the probe in flight = %v, want %v", w, interval)
	}
	if n := e.svc.sent(); n != before+probes+1 {
		t.Errorf("the service got %d requests beside the probe, want 0", n-before-probes-1)
	}
	e.svc.gate <- struct{}{}
	select {
	case err := <-probe:
		if err != nil {
			t.Fatalf("answered probe = %v, want its result", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the probe never returned")
	}
}

func TestBreakerClosesWhenAProbeGetsAnAnswer(t *testing.T) {
	t.Parallel()
	for name, answer := range map[string]error{"success": nil, "a 4xx": rejected} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newBreaker(t)
			e.open(t)
			opened := e.clock.Now()
			e.clock.Add(interval)
			e.svc.set(answer)
			if err := e.analyze(); !errors.Is(err, answer) || answer == nil && err != nil {
				t.Fatalf("probe = %v; want the service's answer %v", err, answer)
			}
			s := e.b.State()
			if s.State != ai.BreakerClosed || s.ConsecutiveFailures != 0 || !s.Since.Equal(opened.Add(interval)) || !s.NextProbe.IsZero() {
				t.Fatalf("after an answered probe: %+v; want closed since now, 0 failures", s)
			}
			e.svc.set(nil)
			for range 20 {
				if err := e.analyze(); err != nil {
					t.Fatalf("closed breaker: %v", err)
				}
			}
			if w := e.b.Wait(); w != 0 {
				t.Errorf("Wait() when closed = %v", w)
			}
			if n := strings.Count(e.log(), "circuit breaker closed"); n != 1 || !strings.Contains(e.log(), "outage=2s") {
				t.Errorf("logged the closing %d times, want once with the outage's length:\n%s", n, e.log())
			}
		})
	}
}

func TestBreakerHonoursRetryAfterForEveryJob(t *testing.T) {
	t.Parallel()
	e := newBreaker(t)
	// One 429 with Retry-After opens it at once, below the threshold.
	limited := &ai.Error{Code: ai.CodeRateLimited, Message: "rate limited (HTTP 429)", RetryAfter: 10 * time.Second}
	e.svc.set(limited)
	err := e.analyze()
	if w, open := ai.BreakerWait(err); !open || w != 10*time.Second || !errors.Is(err, limited) {
		t.Fatalf("429 with Retry-After: 10 = %v; want an *OpenError waiting 10s", err)
	}
	e.svc.set(nil)
	for i := range 99 {
		e.clock.Add(100 * time.Millisecond)
		err := e.analyze()
		if w, open := ai.BreakerWait(err); !open || w != 10*time.Second-time.Duration(i+1)*100*time.Millisecond {
			t.Fatalf("%v after the 429: %v; want an *OpenError until the Retry-After", time.Duration(i+1)*100*time.Millisecond, err)
		}
	}
	if n := e.svc.sent(); n != 1 {
		t.Fatalf("the service got %d requests within its Retry-After, want 1", n)
	}
	e.clock.Add(100 * time.Millisecond)
	if err := e.analyze(); err != nil || e.b.State().State != ai.BreakerClosed {
		t.Fatalf("after the Retry-After: %v, %s; want a probe that closes it", err, e.b.State().State)
	}

	// A 503 with Retry-After on a failed probe sets the next probe.
	e.open(t)
	e.clock.Add(interval)
	e.svc.set(&ai.Error{Code: ai.CodeUnavailable, Message: "down (HTTP 503)", RetryAfter: 30 * time.Second})
	if w, open := ai.BreakerWait(e.analyze()); !open || w != 30*time.Second {
		t.Fatalf("probe answered 503 Retry-After: 30 → wait %v, %v; want 30s", w, open)
	}
	if s := e.b.State(); !s.NextProbe.Equal(e.clock.Now().Add(30 * time.Second)) {
		t.Errorf("next probe at %v, want in 30s", s.NextProbe)
	}
}

func TestBreakerPermanentErrorsNeverOpenIt(t *testing.T) {
	t.Parallel()
	e := newBreaker(t)
	e.svc.set(rejected)
	for range 20 {
		err := e.analyze()
		if !ai.IsPermanent(err) || !errors.Is(err, rejected) {
			t.Fatalf("Analyze = %v; want the permanent error as is (the job fails at once)", err)
		}
		if _, open := ai.BreakerWait(err); open {
			t.Fatalf("a 4xx came back as an *OpenError")
		}
	}
	// An answer, even a refusal, resets the count of outage failures.
	for range 3 {
		e.svc.set(down)
		for range 4 {
			e.analyze()
		}
		e.svc.set(rejected)
		e.analyze()
	}
	if s := e.b.State(); s.State != ai.BreakerClosed || s.ConsecutiveFailures != 0 || e.svc.sent() != 35 {
		t.Errorf("State = %+v after %d requests; want closed, 0 failures: 4xx answers reset the count", s, e.svc.sent())
	}
}

func TestBreakerIgnoresErrorsThatSayNothingOfTheService(t *testing.T) {
	t.Parallel()
	e := newBreaker(t)
	e.svc.set(&ai.Error{Code: ai.CodeImageUnreadable, Message: "the stored image cannot be read now"})
	for range 10 {
		e.analyze()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e.svc.set(&ai.Error{Code: ai.CodeCanceled, Message: "analysis interrupted: canceled"})
	for range 10 {
		e.b.Analyze(ctx, ai.Image{AssetID: "a1", Body: strings.NewReader("x")})
	}
	e.svc.set(down)
	for range 4 {
		e.analyze()
	}
	if s := e.b.State(); s.State != ai.BreakerClosed || s.ConsecutiveFailures != 4 {
		t.Errorf("State = %+v; want closed with 4 failures: unreadable images and cancelled callers do not count", s)
	}
	e.analyze() // the fifth in a row
	if s := e.b.State(); s.State != ai.BreakerOpen {
		t.Fatalf("State = %+v, want open", s)
	}
}

func TestBreakerLateFailureWhileOpenIsNotCounted(t *testing.T) {
	t.Parallel()
	e := newBreaker(t)
	e.svc.mu.Lock()
	e.svc.gate = make(chan struct{})
	e.svc.mu.Unlock()
	e.svc.set(down)
	// Six requests in flight; five fail and open the breaker, then the
	// sixth fails: it must not spend its job's attempt either.
	errs := make(chan error, 6)
	for range 6 {
		go func() { errs <- e.analyze() }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.svc.sent() < 6 {
		if time.Now().After(deadline) {
			t.Fatal("requests never reached the service")
		}
		time.Sleep(time.Millisecond)
	}
	var counted, waiting int
	for range 6 {
		e.svc.gate <- struct{}{}
		select {
		case err := <-errs:
			if _, open := ai.BreakerWait(err); open {
				waiting++
			} else {
				counted++
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a request never returned")
		}
	}
	if counted != 4 || waiting != 2 {
		t.Errorf("%d failures counted as attempts, %d returned as waits; want 4 and 2 (the fifth opened it, the sixth came after)", counted, waiting)
	}
}

func TestBreakerCollector(t *testing.T) {
	t.Parallel()
	e := newBreaker(t)
	e.open(t)
	e.analyze()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(ai.BreakerCollector(e.b))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			got[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	want := map[string]float64{
		"klectr_ai_breaker_state{state=closed}":             0,
		"klectr_ai_breaker_state{state=open}":               1,
		"klectr_ai_breaker_state{state=half-open}":          0,
		"klectr_ai_breaker_consecutive_failures":            5,
		"klectr_ai_breaker_transitions_total{to=closed}":    0,
		"klectr_ai_breaker_transitions_total{to=open}":      1,
		"klectr_ai_breaker_transitions_total{to=half-open}": 0,
		"klectr_ai_breaker_deferred_total":                  1,
	}
	if !maps.Equal(got, want) {
		t.Errorf("metrics = %v\nwant %v", got, want)
	}
}
