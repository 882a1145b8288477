package httpapi

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// UserLimiter is a Limiter with one token bucket per user: perMinute
// requests a minute on average, bursts of up to burst. Buckets idle for ten
// minutes are dropped, so memory follows the active users only.
type UserLimiter struct {
	limit rate.Limit
	burst int
	now   func() time.Time

	mu      sync.Mutex
	users   map[string]*userBucket
	swept   time.Time
	maxIdle time.Duration
}

type userBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// NewUserLimiter returns a limiter; now may be nil (time.Now).
func NewUserLimiter(perMinute, burst int, now func() time.Time) *UserLimiter {
	if now == nil {
		now = time.Now
	}
	return &UserLimiter{
		limit: rate.Limit(float64(perMinute) / 60), burst: burst, now: now,
		users: make(map[string]*userBucket), maxIdle: 10 * time.Minute,
	}
}

// Allow takes one token from userID's bucket, or says how long until one is
// there.
func (l *UserLimiter) Allow(userID string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > l.maxIdle {
		for id, b := range l.users {
			if now.Sub(b.seen) > l.maxIdle {
				delete(l.users, id)
			}
		}
		l.swept = now
	}
	b := l.users[userID]
	if b == nil {
		b = &userBucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.users[userID] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Minute
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
