package riverqueue

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/klectr/klectr/internal/queue"
)

// A group's backlog is its jobs waiting for a first attempt: available with
// no attempt started (River undoes the attempt of a job that Stop
// interrupted, and Retry resets it). The backlog and the group's worst
// priority are read through groupIndex, in the enqueuing transaction: the
// single writer makes the count and the insert one step. There is no
// counter to maintain, so nothing can leak.
const (
	groupIndexName = "klectr_river_job_group"
	groupIndex     = `CREATE INDEX IF NOT EXISTS ` + groupIndexName + `
	ON river_job (queue, json_extract(args, '$.group'), priority)
	WHERE kind = 'klectr' AND state = 'available' AND attempt = 0`
	backlogSQL = `SELECT count(*), ifnull(max(priority), 1) FROM river_job
	WHERE kind = 'klectr' AND state = 'available' AND attempt = 0
		AND queue = ? AND json_extract(args, '$.group') = ?`
)

// tiers assigns the priorities of one batch: each job counts in its
// group's backlog for the jobs after it.
type tiers map[[2]string]*backlog

type backlog struct{ n, worst int }

// next returns the River priority (1 to 4, fetched lowest first) of the
// next job of group in queue qname.
func (t tiers) next(ctx context.Context, tx *sql.Tx, qname, group string) (int, error) {
	k := [2]string{qname, group}
	b, ok := t[k]
	if !ok {
		b = &backlog{}
		if err := tx.QueryRowContext(ctx, backlogSQL, qname, group).Scan(&b.n, &b.worst); err != nil {
			return 0, fmt.Errorf("riverqueue: count the backlog of a job group: %w", err)
		}
		t[k] = b
	}
	tier := max(queue.FairTier(b.n), b.worst)
	b.n++
	b.worst = tier
	return tier, nil
}
