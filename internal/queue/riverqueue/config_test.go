package riverqueue

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// River deletes discarded jobs after 7 days and cancelled ones after 24 h
// unless told not to; dead jobs must stay until an operator deletes them.
// (River v0.51.2's job cleaner skips a state whose period is -1.)
func TestDeadJobsAreNeverExpired(t *testing.T) {
	t.Parallel()
	worker := queue.HandlerFunc(func(context.Context, *queue.Job) error { return nil })
	for _, handler := range []queue.Handler{nil, worker} { // enqueue-only and worker
		cfg, err := Config{Handler: handler}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		rc := (&Queue{cfg: cfg, log: cfg.Logger}).riverConfig()
		if rc.DiscardedJobRetentionPeriod != -1 || rc.CancelledJobRetentionPeriod != -1 {
			t.Errorf("retention of dead jobs: discarded %v, cancelled %v; want -1 (forever) for both",
				rc.DiscardedJobRetentionPeriod, rc.CancelledJobRetentionPeriod)
		}
		if rc.MaxAttempts != 4 || rc.RescueStuckJobsAfter <= rc.JobTimeout {
			t.Errorf("MaxAttempts %d (want 4 = 3 retries + 1), rescue after %v with job timeout %v (must exceed it)",
				rc.MaxAttempts, rc.RescueStuckJobsAfter, rc.JobTimeout)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]Config{
		"negative concurrency":         {Concurrency: -1},
		"rescue not after the timeout": {JobTimeout: time.Minute, RescueAfter: time.Minute},
		"negative retries":             {Policy: queue.Policy{Retries: -1, Backoff: time.Second}},
		"no backoff":                   {Policy: queue.Policy{Retries: 2}},
		"cooldown over poll":           {FetchPollInterval: time.Millisecond, FetchCooldown: time.Second},
	} {
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Admin calls find jobs by our ID, and Enqueue counts a group's backlog,
// through the indexes New creates, not by scanning river_job.
func TestLookupsUseTheirIndex(t *testing.T) {
	t.Parallel()
	db, err := sqlitedb.Open(context.Background(), filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := New(context.Background(), db, Config{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		query, index string
		args         []any
	}{
		{findByID, idIndexName, []any{kind, "x"}},
		{backlogSQL, groupIndexName, []any{queue.AIProcessing, "user"}},
	} {
		plan := queryPlan(t, db, c.query, c.args...)
		if !strings.Contains(plan, c.index) || strings.Contains(plan, "SCAN river_job") {
			t.Errorf("%s\ndoes not search %s:\n%s", c.query, c.index, plan)
		}
	}
}

func queryPlan(t *testing.T, db *sqlitedb.DB, query string, args ...any) string {
	t.Helper()
	rows, err := db.Read.Query(`EXPLAIN QUERY PLAN `+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan strings.Builder
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(detail + "\n")
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan.String()
}
