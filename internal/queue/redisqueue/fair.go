package redisqueue

import (
	"strconv"
	"strings"

	"github.com/klectr/klectr/internal/queue"
)

// Fairness between groups (queue.Backend). Each queue is served as
// queue.FairTiers asynq queues (subQueue), which the workers serve in
// strict priority, tier 1 first; asynq dequeues only when a worker slot is
// free, and in FIFO order within each one.
//
// A group's backlog is a sorted set (groupKey) of the IDs of its jobs that
// wait for a first attempt, each scored by its tier. The script that
// stores a job (enqueue or replay) reads the set to choose the tier and
// adds the job, in the same step; the worker removes the ID at each
// delivery, before running the handler (ZREM is idempotent, so a worker
// lost before it leaves the ID for the next delivery to remove). Nothing
// counts, so nothing drifts; an ID left behind anyway (a failed ZREM, a
// task deleted behind this package's back) is found by the next placement
// for the group, which drops IDs from both ends of the set until it finds
// a job still pending; the stale IDs in between follow as the group's real
// backlog drains.

// placeLua defines place(q, group, id): the asynq queue for a job of queue q
// and group that waits from now, recorded in the group's set. The tier is
// queue.FairTier of the backlog, but never better than the group's worst
// waiting job, so that the group's jobs keep their order.
var placeLua = `
local fairBounds = {` + fairBounds() + `}
local pruned = {}
local function pending(q, id, tier)
	local sq = q
	if tier > 1 then sq = q .. ":" .. tier end
	return redis.call("HGET", "asynq:{" .. sq .. "}:t:" .. id, "state") == "pending"
end
local function prune(key, q, from)
	for _ = 1, 16 do
		local e = redis.call("ZRANGE", key, from, from, "WITHSCORES")
		if #e == 0 or pending(q, e[1], tonumber(e[2])) then return end
		redis.call("ZREM", key, e[1])
	end
end
local function place(q, group, id)
	local key = "klectr:fair:" .. q .. ":" .. group
	if not pruned[key] then
		prune(key, q, 0)
		prune(key, q, -1)
		pruned[key] = true
	end
	local n = redis.call("ZCARD", key)
	local tier = 1
	for _, b in ipairs(fairBounds) do
		if n >= b then tier = tier + 1 end
	end
	local worst = redis.call("ZRANGE", key, -1, -1, "WITHSCORES")[2]
	if worst and tonumber(worst) > tier then tier = tonumber(worst) end
	redis.call("ZADD", key, tier, id)
	if tier == 1 then return q end
	return q .. ":" .. tier
end
`

// fairBounds lists, as a Lua table's contents, the least backlog of each
// tier after the first, from queue.FairTier.
func fairBounds() string {
	var b []string
	for n, tier := 0, 1; tier < queue.FairTiers; n++ {
		if t := queue.FairTier(n); t > tier {
			b = append(b, strconv.Itoa(n))
			tier = t
		}
	}
	return strings.Join(b, ", ")
}

// fairPriorities is asynq's strict priority of every sub-queue of queues:
// tier 1 of every queue first.
func fairPriorities(queues []string) map[string]int {
	prio := make(map[string]int, len(queues)*queue.FairTiers)
	for _, q := range queues {
		for t, sq := range subQueues(q) {
			prio[sq] = queue.FairTiers - t
		}
	}
	return prio
}
