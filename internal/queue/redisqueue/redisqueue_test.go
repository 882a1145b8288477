package redisqueue_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/queuetest"
	"github.com/klectr/klectr/internal/queue/redisqueue"
	"github.com/klectr/klectr/internal/testenv"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	queuetest.TestBackend(t, queuetest.Factory{
		NewStorage: func(t *testing.T) string { return testenv.RedisURL(t) },
		Open: func(t *testing.T, url string, cfg queuetest.Config) queue.Backend {
			return open(t, redisqueue.Config{
				URL:         url,
				Handler:     cfg.Handler,
				Policy:      cfg.Policy,
				Concurrency: cfg.Concurrency,
				// The suite never runs two live workers on one database,
				// so every backend it opens may recover at start.
				RecoverOnStart: true,
			})
		},
	})
}

// open returns a Queue that is closed when the test ends (after the
// suite's Stop).
func open(t testing.TB, cfg redisqueue.Config) *redisqueue.Queue {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := redisqueue.New(ctx, cfg)
	if err != nil {
		t.Fatalf("redisqueue.New: %v", err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return q
}

// testLogger shows warnings and errors only.
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
