package ai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Breaker defaults (BreakerConfig's zero values).
const (
	DefaultBreakerThreshold     = 5
	DefaultBreakerProbeInterval = 2 * time.Second
)

// The breaker's states, as State reports them.
const (
	BreakerClosed   = "closed"    // requests go to the service
	BreakerOpen     = "open"      // no request goes until the next probe is due
	BreakerHalfOpen = "half-open" // one request, the probe, may go at a time
)

// BreakerConfig configures a Breaker. The zero value of each field means its
// default.
type BreakerConfig struct {
	// Threshold is how many outage failures in a row (ai_unavailable,
	// ai_timeout, ai_rate_limited: the service down, unreachable, too slow
	// or overloaded) open the breaker. Defaults to DefaultBreakerThreshold.
	Threshold int
	// ProbeInterval is how long the breaker stays open before it lets one
	// request through as a probe, and again after each failed probe: while
	// the service is down it gets at most one request per interval, and
	// after it recovers the breaker closes within about one interval.
	// Defaults to DefaultBreakerProbeInterval.
	ProbeInterval time.Duration
	// Now reads the clock; nil means time.Now.
	Now func() time.Time
	// Logger gets one line when the breaker opens and one when it closes
	// (debug lines for the probes between); nil discards.
	Logger *slog.Logger
}

// Breaker is a circuit breaker around the AI service: an Analyzer that
// stops sending requests while the service is down, so that an outage costs
// the jobs waiting time, not attempts. It is meant for one per process
// around the Client, shared by all the worker's jobs.
//
//   - Closed: requests go through. Threshold outage failures in a row open
//     it; any answer from the service (a success, or a 4xx, which still
//     fails its job at once) resets the count. Errors that say nothing about
//     the service (the caller's ctx cancelled, the stored image unreadable)
//     neither count nor reset.
//   - A 429 or 503 with Retry-After opens it at once, for that delay (at
//     most MaxRetryAfter), for every job: the service asked the process,
//     not one job, to wait.
//   - Open: Analyze sends nothing and returns an *OpenError saying how long
//     to wait. When ProbeInterval (or the Retry-After) has passed, it is
//     half-open: the next request is the probe, and the others get an
//     *OpenError until it ends. A probe that gets an answer closes it; one
//     that fails opens it for another interval.
//   - The failure that opens it, a failed probe, and any outage failure
//     that arrives while it is open are returned as *OpenError too: the
//     job lent its request to the breaker's judgement and should wait like
//     the others, not spend an attempt. Only the failures before the
//     threshold count as the jobs' attempts.
//
// A job that waits on an open breaker waits as long as the outage lasts;
// nothing goes dead because the service is down.
type Breaker struct {
	next     Analyzer
	limit    int
	interval time.Duration
	now      func() time.Time
	log      *slog.Logger

	mu          sync.Mutex
	state       string
	since       time.Time // when it last opened (open, half-open) or closed
	failures    int       // outage failures in a row
	until       time.Time // open: when the next probe may go
	probing     bool      // half-open: the probe is in flight
	cause       string    // the code of the failure that opened it
	transitions map[string]uint64
	deferred    uint64
}

var _ Analyzer = (*Breaker)(nil)

// NewBreaker wraps next, the AI service's Client, in a circuit breaker.
func NewBreaker(next Analyzer, cfg BreakerConfig) *Breaker {
	b := &Breaker{
		next: next, limit: cfg.Threshold, interval: cfg.ProbeInterval, now: cfg.Now, log: cfg.Logger,
		state: BreakerClosed, transitions: map[string]uint64{},
	}
	if b.limit <= 0 {
		b.limit = DefaultBreakerThreshold
	}
	if b.interval <= 0 {
		b.interval = DefaultBreakerProbeInterval
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.since = b.now()
	return b
}

// OpenError is what Breaker.Analyze returns for a request it did not send
// (Err is then an ai_unavailable *Error) or whose failure it took as part
// of an outage (Err is that failure). The job should wait Wait and try
// again, without counting an attempt.
type OpenError struct {
	Wait time.Duration
	Err  error
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("ai service circuit breaker open, next try in %v: %v", e.Wait.Round(time.Millisecond), e.Err)
}

func (e *OpenError) Unwrap() error { return e.Err }

// BreakerWait reports whether err, or an error it wraps, is an *OpenError,
// and how long it says to wait.
func BreakerWait(err error) (time.Duration, bool) {
	var o *OpenError
	if !errors.As(err, &o) {
		return 0, false
	}
	return o.Wait, true
}

var errNotSent = &Error{Code: CodeUnavailable, Message: "the AI service is unavailable; the analysis waits for it"}

// Analyze sends img to the service unless the breaker is open; see Breaker.
func (b *Breaker) Analyze(ctx context.Context, img Image) (json.RawMessage, error) {
	probe, err := b.admit()
	if err != nil {
		return nil, err
	}
	res, err := b.next.Analyze(ctx, img)
	return res, b.record(ctx, probe, err)
}

// Wait is how long until the breaker may let a request through: 0 when
// closed, or when a probe may go now. It claims nothing: the next Analyze
// decides.
func (b *Breaker) Wait() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == BreakerOpen:
		return max(b.until.Sub(b.now()), 0)
	case b.state == BreakerHalfOpen && b.probing:
		return b.interval
	}
	return 0
}

// admit reports whether the request may go, and whether it is the probe.
func (b *Breaker) admit() (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerClosed:
		return false, nil
	case BreakerOpen:
		now := b.now()
		if now.Before(b.until) {
			b.deferred++
			return false, &OpenError{Wait: b.until.Sub(now), Err: errNotSent}
		}
		b.set(BreakerHalfOpen)
		b.log.Debug("ai service circuit breaker half-open: probing")
	}
	if b.probing {
		b.deferred++
		return false, &OpenError{Wait: b.interval, Err: errNotSent}
	}
	b.probing = true
	return true, nil
}

// record takes the outcome of a request that was sent and returns the error
// for the caller.
func (b *Breaker) record(ctx context.Context, probe bool, err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	now := b.now()
	switch outcome(ctx, err) {
	case answered:
		b.failures = 0
		if b.state != BreakerClosed {
			b.log.Info("ai service circuit breaker closed: the service answers again",
				"outage", now.Sub(b.since).Round(time.Millisecond), "cause", b.cause)
			b.set(BreakerClosed)
			b.since = now
		}
		return err
	case neutral:
		return err
	}
	b.failures++
	ra, asked := RetryAfter(err)
	wait := b.interval
	if asked {
		wait = ra
	}
	switch {
	case b.state == BreakerClosed && (b.failures >= b.limit || asked):
		b.set(BreakerOpen)
		b.since, b.until, b.cause = now, now.Add(wait), Code(err)
		b.log.Warn("ai service circuit breaker opened: requests stop until a probe gets an answer",
			"consecutiveFailures", b.failures, "cause", b.cause, "retryAfter", ra, "nextProbe", wait)
	case b.state == BreakerClosed:
		return err
	case probe:
		b.set(BreakerOpen)
		b.until = now.Add(wait)
		b.log.Debug("ai service circuit breaker probe failed", "code", Code(err), "nextProbe", wait)
	case asked && b.state == BreakerOpen && now.Add(wait).After(b.until):
		b.until = now.Add(wait)
	}
	if b.state == BreakerHalfOpen {
		// A request sent before the breaker opened, failing while the
		// probe is out.
		return &OpenError{Wait: b.interval, Err: err}
	}
	return &OpenError{Wait: max(b.until.Sub(now), 0), Err: err}
}

func (b *Breaker) set(state string) {
	b.state = state
	b.transitions[state]++
}

type result int

const (
	answered result = iota // the service answered: it is up
	outage                 // the service is down, unreachable, too slow or overloaded
	neutral                // nothing learnt about the service
)

func outcome(ctx context.Context, err error) result {
	if err == nil {
		return answered
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return neutral
	}
	switch Code(err) {
	case CodeUnavailable, CodeTimeout, CodeRateLimited:
		if !IsPermanent(err) {
			return outage
		}
	case CodeRejected, CodeBadResponse, CodeResponseTooLarge:
		return answered
	}
	return neutral
}

// BreakerState is a snapshot of a Breaker, for /readyz, the admin API and
// metrics.
type BreakerState struct {
	// State is BreakerClosed, BreakerOpen or BreakerHalfOpen.
	State string `json:"state"`
	// Since is when the breaker last opened (open, half-open: the outage's
	// start) or closed.
	Since time.Time `json:"since"`
	// ConsecutiveFailures counts the outage failures in a row (reset by
	// any answer from the service).
	ConsecutiveFailures int `json:"consecutiveFailures"`
	// NextProbe is when an open breaker lets its next probe go; zero
	// otherwise.
	NextProbe time.Time `json:"nextProbe,omitzero"`
	// Transitions counts the transitions into each state since the
	// process started; Deferred counts the requests not sent.
	Transitions map[string]uint64 `json:"-"`
	Deferred    uint64            `json:"-"`
}

// State returns a snapshot of the breaker.
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := BreakerState{State: b.state, Since: b.since, ConsecutiveFailures: b.failures, Deferred: b.deferred,
		Transitions: make(map[string]uint64, 3)}
	if b.state == BreakerOpen {
		s.NextProbe = b.until
	}
	for _, st := range []string{BreakerClosed, BreakerOpen, BreakerHalfOpen} {
		s.Transitions[st] = b.transitions[st]
	}
	return s
}
