package queue

import (
	"errors"
	"math/rand/v2"
	"time"
)

// DefaultRetries and DefaultBackoff are DESIGN §4's defaults
// (JOB_MAX_RETRIES, JOB_BACKOFF): delays of about 2 s, 4 s and 8 s.
const (
	DefaultRetries = 3
	DefaultBackoff = 2 * time.Second
)

// Jitter is the relative spread of Policy.Delay: each delay is drawn
// uniformly from ±20% around the nominal one, so that jobs that failed
// together (an AI outage) do not all retry in the same instant.
const Jitter = 0.2

// maxDelay bounds Delay so that a large attempt number cannot overflow.
const maxDelay = 24 * time.Hour

// Policy is how often and how soon a failed job is tried again.
type Policy struct {
	// Retries is the number of attempts after the first.
	Retries int
	// Backoff is the delay after the first failed attempt; it doubles after
	// each further one.
	Backoff time.Duration
}

// DefaultPolicy is 3 retries after 2 s, 4 s and 8 s (each ±20%).
func DefaultPolicy() Policy { return Policy{Retries: DefaultRetries, Backoff: DefaultBackoff} }

// Validate reports a policy no backend can follow.
func (p Policy) Validate() error {
	if p.Retries < 0 {
		return errors.New("queue: policy: retries must not be negative")
	}
	if p.Backoff <= 0 {
		return errors.New("queue: policy: backoff must be positive")
	}
	return nil
}

// MaxAttempts is Retries+1: the first attempt and every retry.
func (p Policy) MaxAttempts() int { return p.Retries + 1 }

// Delay is how long to wait after failed attempt number attempt (1 for the
// first) before the next one: Backoff·2^(attempt-1), then jittered by ±Jitter,
// and never more than 24 h.
func (p Policy) Delay(attempt int) time.Duration {
	d := p.Backoff
	for i := 1; i < attempt && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	f := 1 - Jitter + 2*Jitter*rand.Float64()
	return time.Duration(float64(d) * f)
}
