package riverqueue_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/queuetest"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	template := migratedTemplate(t)
	queuetest.TestBackend(t, queuetest.Factory{
		NewStorage: func(t *testing.T) string {
			path := filepath.Join(t.TempDir(), "klectr.db")
			copyFile(t, template, path)
			return path
		},
		Open: func(t *testing.T, path string, cfg queuetest.Config) queue.Backend {
			return open(t, path, riverqueue.Config{
				Handler:     cfg.Handler,
				Policy:      cfg.Policy,
				Concurrency: cfg.Concurrency,
				// The suite never runs two live workers on one file, so
				// every backend it opens may recover at start.
				RecoverOnStart: true,
			})
		},
	})
}

// migratedTemplate is a closed database file that New has migrated. Copying
// it saves each test the migrations, which take over a second under -race.
func migratedTemplate(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "template.db")
	db, err := sqlitedb.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("sqlitedb.Open: %v", err)
	}
	if _, err := riverqueue.New(context.Background(), db, riverqueue.Config{}); err != nil {
		t.Fatalf("riverqueue.New: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close template: %v", err)
	}
	if _, err := os.Stat(path + "-wal"); err == nil {
		t.Fatalf("template left a WAL file behind; a plain copy would lose it")
	}
	return path
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// open opens the SQLite file at path and a Queue over it, closing the file
// when the test ends (after the suite's Stop).
func open(t *testing.T, path string, cfg riverqueue.Config) *riverqueue.Queue {
	t.Helper()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, path)
	if err != nil {
		t.Fatalf("sqlitedb.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	q, err := riverqueue.New(ctx, db, cfg)
	if err != nil {
		t.Fatalf("riverqueue.New: %v", err)
	}
	return q
}

// testLogger shows warnings and errors only: River is chatty at info.
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
