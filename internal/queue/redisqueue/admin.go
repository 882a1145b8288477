package redisqueue

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/queue"
)

// asynq's task states in ours. A waiting task (asynq's pending, scheduled
// or retry) is retrying once an attempt of its life has failed, pending
// before: asynq moves a due retry to its pending list, and puts a job
// interrupted by Stop on its retry set uncounted.
func stateOf(asynqState string, retried int64) queue.State {
	switch asynqState {
	case "active":
		return queue.Active
	case "completed":
		return queue.Completed
	case "archived": // never written by this package
		return queue.Dead
	}
	if retried > 0 {
		return queue.Retrying
	}
	return queue.Pending
}

// infoOfTask builds Info from asynq's task hash; group is the job's.
func infoOfTask(id string, h map[string]string) (info queue.Info, group string, err error) {
	m, err := decodeTaskMessage([]byte(h["msg"]))
	if err != nil {
		return queue.Info{}, "", fmt.Errorf("redisqueue: job %s: %w", id, err)
	}
	env, err := decodeEnvelope(id, m.Payload)
	if err != nil {
		return queue.Info{}, "", err
	}
	info = queue.Info{
		ID:          id,
		Queue:       baseQueue(m.Queue),
		State:       stateOf(h["state"], m.Retried),
		Attempt:     int(m.Retried),
		MaxAttempts: env.MaxAttempts,
		Payload:     env.Payload,
		EnqueuedAt:  env.EnqueuedAt,
	}
	switch info.State {
	case queue.Active, queue.Completed:
		info.Attempt = min(info.Attempt+1, info.MaxAttempts)
	}
	if info.State == queue.Completed && m.CompletedAt > 0 {
		at := time.Unix(m.CompletedAt, 0).UTC()
		info.FinishedAt = &at
	}
	if info.Errors, err = decodeErrors(id, h[errorsField]); err != nil {
		return queue.Info{}, "", err
	}
	return info, env.Group, nil
}

// infoOfDead builds Info from a dead record; group is the job's.
func infoOfDead(id string, h map[string]string) (info queue.Info, group string, err error) {
	env, err := decodeEnvelope(id, []byte(h["job"]))
	if err != nil {
		return queue.Info{}, "", err
	}
	attempt, err1 := strconv.Atoi(h["attempt"])
	finished, err2 := strconv.ParseInt(h["finished"], 10, 64)
	if err1 != nil || err2 != nil {
		return queue.Info{}, "", fmt.Errorf("redisqueue: job %s: malformed dead record", id)
	}
	at := time.Unix(0, finished).UTC()
	info = queue.Info{
		ID:          id,
		Queue:       h["queue"],
		State:       queue.Dead,
		Attempt:     attempt,
		MaxAttempts: env.MaxAttempts,
		Payload:     env.Payload,
		EnqueuedAt:  env.EnqueuedAt,
		FinishedAt:  &at,
	}
	if info.Errors, err = decodeErrors(id, h["errors"]); err != nil {
		return queue.Info{}, "", err
	}
	return info, env.Group, nil
}

func decodeErrors(id, raw string) ([]string, error) {
	if raw == "" || raw == "{}" { // Lua's cjson writes an empty table as {}
		return nil, nil
	}
	var errs []string
	if err := json.Unmarshal([]byte(raw), &errs); err != nil {
		return nil, fmt.Errorf("redisqueue: job %s: decode error history: %w", id, err)
	}
	return errs, nil
}

// found is a job as find read it, with where it is: the asynq queue of its
// task ("" for a dead record) and its group.
type found struct {
	queue.Info
	asynqQueue, group string
}

// find reads job id: its asynq task (from whichever queue holds it) or, if
// none, its dead record. A job with both (its worker was lost between
// writing the dead record and asynq's deletion) is still asynq's.
func (q *Queue) find(ctx context.Context, id string) (found, error) {
	queues, err := q.queues(ctx)
	if err != nil {
		return found{}, err
	}
	tasks := make([]*redis.MapStringStringCmd, len(queues))
	var dead *redis.MapStringStringCmd
	_, err = q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, qn := range queues {
			tasks[i] = p.HGetAll(ctx, taskKey(qn, id))
		}
		dead = p.HGetAll(ctx, deadKey(id))
		return nil
	})
	if err != nil {
		return found{}, fmt.Errorf("redisqueue: get job %s: %w", id, err)
	}
	for i, c := range tasks {
		if h := c.Val(); len(h) > 0 {
			info, group, err := infoOfTask(id, h)
			return found{info, queues[i], group}, err
		}
	}
	if h := dead.Val(); len(h) > 0 {
		info, group, err := infoOfDead(id, h)
		return found{info, "", group}, err
	}
	return found{}, fmt.Errorf("redisqueue: job %s: %w", id, queue.ErrNotFound)
}

// Get returns one job by ID.
func (q *Queue) Get(ctx context.Context, id string) (queue.Info, error) {
	f, err := q.find(ctx, id)
	return f.Info, err
}

// candidates lists the IDs in asynq's structures that may hold jobs in state
// s, per queue.
func (q *Queue) candidates(ctx context.Context, s queue.State) (map[string][]string, error) {
	queues, err := q.queues(ctx)
	if err != nil {
		return nil, err
	}
	type read struct {
		queue string
		list  *redis.StringSliceCmd
	}
	var reads []read
	_, err = q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, qn := range queues {
			switch s {
			case queue.Pending, queue.Retrying:
				reads = append(reads,
					read{qn, p.LRange(ctx, pendingKey(qn), 0, -1)},
					read{qn, p.ZRange(ctx, retryKey(qn), 0, -1)},
					read{qn, p.ZRange(ctx, scheduledKey(qn), 0, -1)})
			case queue.Active:
				reads = append(reads, read{qn, p.LRange(ctx, activeKey(qn), 0, -1)})
			case queue.Completed:
				reads = append(reads, read{qn, p.ZRange(ctx, completedKey(qn), 0, -1)})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redisqueue: list %s: %w", s, err)
	}
	ids := map[string][]string{}
	for _, r := range reads {
		ids[r.queue] = append(ids[r.queue], r.list.Val()...)
	}
	return ids, nil
}

// scan reads the tasks of candidates(s) in batches and calls fn with each
// one in state s, or, with both, in pending or retrying.
func (q *Queue) scan(ctx context.Context, s queue.State, both bool, fn func(queue.Info)) error {
	cands, err := q.candidates(ctx, s)
	if err != nil {
		return err
	}
	const batch = 500
	for qn, ids := range cands {
		for chunk := range slices.Chunk(ids, batch) {
			cmds := make([]*redis.MapStringStringCmd, len(chunk))
			_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, id := range chunk {
					cmds[i] = p.HGetAll(ctx, taskKey(qn, id))
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("redisqueue: list %s: %w", s, err)
			}
			for i, c := range cmds {
				h := c.Val()
				if len(h) == 0 {
					continue // gone meanwhile
				}
				info, _, err := infoOfTask(chunk[i], h)
				if err != nil {
					return err
				}
				if info.State == s || both && (info.State == queue.Pending || info.State == queue.Retrying) {
					fn(info)
				}
			}
		}
	}
	return nil
}

// Counts counts jobs by state over all queues. The dead ones are counted
// from their set; the others are read one by one (see the package doc).
func (q *Queue) Counts(ctx context.Context) (map[queue.State]int, error) {
	counts := make(map[queue.State]int, 5)
	for _, s := range queue.States() {
		counts[s] = 0
	}
	n, err := q.rdb.ZCard(ctx, deadSetKey).Result()
	if err != nil {
		return nil, fmt.Errorf("redisqueue: counts: %w", err)
	}
	counts[queue.Dead] = int(n)
	for _, s := range []queue.State{queue.Active, queue.Completed} {
		cands, err := q.candidates(ctx, s)
		if err != nil {
			return nil, err
		}
		for _, ids := range cands {
			counts[s] += len(ids)
		}
	}
	if err := q.scan(ctx, queue.Pending, true, func(info queue.Info) { counts[info.State]++ }); err != nil {
		return nil, err
	}
	return counts, nil
}

// newestFirst orders by EnqueuedAt, then ID, both descending.
func newestFirst(a, b queue.Info) int {
	if c := b.EnqueuedAt.Compare(a.EnqueuedAt); c != 0 {
		return c
	}
	return cmp.Compare(b.ID, a.ID)
}

// List returns up to limit jobs in state, newest enqueued first.
func (q *Queue) List(ctx context.Context, state queue.State, limit int) ([]queue.Info, error) {
	if !state.Valid() {
		return nil, fmt.Errorf("redisqueue: list: unknown state %q", state)
	}
	if limit <= 0 {
		limit = 100
	}
	if state == queue.Dead {
		return q.listDead(ctx, limit)
	}
	var infos []queue.Info
	err := q.scan(ctx, state, false, func(info queue.Info) {
		infos = append(infos, info)
		if len(infos) >= 2*limit+100 {
			slices.SortFunc(infos, newestFirst)
			infos = infos[:limit]
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(infos, newestFirst)
	if len(infos) > limit {
		infos = infos[:limit]
	}
	if infos == nil {
		infos = []queue.Info{}
	}
	return infos, nil
}

func (q *Queue) listDead(ctx context.Context, limit int) ([]queue.Info, error) {
	ids, err := q.rdb.ZRevRange(ctx, deadSetKey, 0, int64(limit-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("redisqueue: list dead: %w", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err = q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, deadKey(id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redisqueue: list dead: %w", err)
	}
	infos := make([]queue.Info, 0, len(ids))
	for i, c := range cmds {
		if h := c.Val(); len(h) > 0 {
			info, _, err := infoOfDead(ids[i], h)
			if err != nil {
				return nil, err
			}
			infos = append(infos, info)
		}
	}
	// Equal scores come in reverse ID order already; this only guards
	// against a changed score precision.
	slices.SortStableFunc(infos, newestFirst)
	return infos, nil
}

// replayScript turns a dead record back into a pending asynq task, in the
// tier of a job of its group enqueued now (fair.go).
// KEYS: dead record, dead set. ARGV: message around the queue name (two
// parts), id, now (ns), queue, number of errors so far, group. Returns 1, 0
// if the record is gone, -1 if asynq still holds the task.
var replayScript = redis.NewScript(placeLua + `
if redis.call("EXISTS", KEYS[1]) == 0 then
	return 0
end
local id, q = ARGV[3], ARGV[5]
for t = 1, ` + strconv.Itoa(queue.FairTiers) + ` do
	local sq = q
	if t > 1 then sq = q .. ":" .. t end
	if redis.call("EXISTS", "asynq:{" .. sq .. "}:t:" .. id) == 1 then
		return -1
	end
end
local sq = place(q, ARGV[7], id)
local task = "asynq:{" .. sq .. "}:t:" .. id
local errs = redis.call("HGET", KEYS[1], "errors")
redis.call("HSET", task, "msg", ARGV[1] .. string.char(34, #sq) .. sq .. ARGV[2], "state", "pending", "pending_since", ARGV[4], "klectr:base", ARGV[6])
if errs and errs ~= "[]" then
	redis.call("HSET", task, "klectr:errors", errs)
end
redis.call("LPUSH", "asynq:{" .. sq .. "}:pending", id)
redis.call("SADD", "asynq:queues", sq)
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[2], id)
return 1`)

// Retry replays a dead job: pending now, with a fresh attempt budget from
// this Queue's Policy. Its ID, payload, group, EnqueuedAt and error history
// stay.
func (q *Queue) Retry(ctx context.Context, id string) error {
	f, err := q.find(ctx, id)
	if err != nil {
		return err
	}
	if f.State != queue.Dead {
		return fmt.Errorf("redisqueue: retry job %s: %w", id, queue.ErrNotDead)
	}
	m, err := q.newMessage(id, f.group, f.Payload, f.EnqueuedAt)
	if err != nil {
		return err
	}
	head, tail := m.encodeAround()
	n, err := replayScript.Run(ctx, q.rdb, []string{deadKey(id), deadSetKey},
		head, tail, id, time.Now().UnixNano(), f.Queue, len(f.Errors), f.group).Int()
	switch {
	case err != nil:
		return fmt.Errorf("redisqueue: retry job %s: %w", id, err)
	case n == 0:
		return fmt.Errorf("redisqueue: retry job %s: %w", id, queue.ErrNotFound)
	case n < 0:
		return fmt.Errorf("redisqueue: retry job %s: %w", id, queue.ErrNotDead)
	}
	return nil
}

// deleteScript removes a job that is not running: its asynq task (from the
// structure its state names), its dead record, and its place in its
// group's backlog.
// KEYS: task, dead record, dead set, group set. ARGV: id, asynq key prefix
// of its queue. Returns 1, 0 if nothing was there, -1 if it is active.
var deleteScript = redis.NewScript(`
local state = redis.call("HGET", KEYS[1], "state")
if state == "active" then
	return -1
end
local found = 0
if state then
	local p = ARGV[2]
	if state == "pending" then
		redis.call("LREM", p .. "pending", 0, ARGV[1])
	elseif state == "retry" or state == "scheduled" or state == "completed" or state == "archived" then
		redis.call("ZREM", p .. state, ARGV[1])
	end
	redis.call("DEL", KEYS[1])
	found = 1
end
if redis.call("DEL", KEYS[2]) == 1 then
	found = 1
end
redis.call("ZREM", KEYS[3], ARGV[1])
redis.call("ZREM", KEYS[4], ARGV[1])
return found`)

// Delete removes a job in any state but active.
func (q *Queue) Delete(ctx context.Context, id string) error {
	f, err := q.find(ctx, id)
	if err != nil {
		return err
	}
	aq := f.asynqQueue
	if aq == "" {
		aq = f.Queue // a dead record: no task
	}
	n, err := deleteScript.Run(ctx, q.rdb, []string{taskKey(aq, id), deadKey(id), deadSetKey, groupKey(f.Queue, f.group)},
		id, queuePrefix(aq)).Int()
	switch {
	case err != nil:
		return fmt.Errorf("redisqueue: delete job %s: %w", id, err)
	case n == 0:
		return fmt.Errorf("redisqueue: job %s: %w", id, queue.ErrNotFound)
	case n < 0:
		return fmt.Errorf("redisqueue: delete job %s: %w", id, queue.ErrActive)
	}
	return nil
}
