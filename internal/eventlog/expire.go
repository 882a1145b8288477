package eventlog

import (
	"context"
	"log/slog"
	"time"
)

// DefaultExpireEvery is how often RunExpiry deletes expired events.
const DefaultExpireEvery = 10 * time.Minute

// RunExpiry deletes the events older than retention at once and then every
// interval (<= 0: DefaultExpireEvery) until ctx ends. Run it in every
// deployment shape, in one process or in all (Expire is idempotent): a
// MongoDB TTL index makes it redundant, FerretDB has none.
func RunExpiry(ctx context.Context, l interface {
	Expire(ctx context.Context, before time.Time) (int64, error)
}, retention, interval time.Duration, now func() time.Time, log *slog.Logger) {
	if interval <= 0 {
		interval = DefaultExpireEvery
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := l.Expire(ctx, now().Add(-retention))
		switch {
		case err != nil && ctx.Err() == nil:
			log.WarnContext(ctx, "event log expiry failed", "err", err)
		case n > 0:
			log.InfoContext(ctx, "expired events deleted", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
