package redisqueue

import (
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/testenv"
)

func groupJobs(group string, n int) []queue.Job {
	jobs := make([]queue.Job, n)
	for i := range jobs {
		jobs[i] = newJob()
		jobs[i].Group = group
	}
	return jobs
}

// A batch spreads over the tiers' asynq queues, where asynq reads each task
// as its own (the scripts write the queue name into the message), and the
// group's backlog set holds each ID with its tier.
func TestTiersAreAsynqQueues(t *testing.T) {
	t.Parallel()
	q := newQueue(t, testenv.RedisURL(t), Config{})
	insp := asynq.NewInspectorFromRedisClient(q.rdb)
	jobs := groupJobs("u1", 300)
	if err := q.Enqueue(t.Context(), jobs...); err != nil {
		t.Fatal(err)
	}
	for i, j := range jobs {
		tier := queue.FairTier(i)
		sq := subQueue(j.Queue, tier)
		ti, err := insp.GetTaskInfo(sq, j.ID)
		if err != nil {
			t.Fatalf("job %d: asynq cannot read it in %s: %v", i, sq, err)
		}
		if ti.Queue != sq || ti.ID != j.ID || ti.State != asynq.TaskStatePending {
			t.Errorf("job %d: asynq sees queue %s, id %s, state %v; want %s, %s, pending", i, ti.Queue, ti.ID, ti.State, sq, j.ID)
		}
		score, err := q.rdb.ZScore(t.Context(), groupKey(j.Queue, "u1"), j.ID).Result()
		if err != nil || int(score) != tier {
			t.Errorf("job %d: backlog score %v (%v), want tier %d", i, score, err, tier)
		}
	}
	if got := fairBounds(); got != "4, 32, 256" {
		t.Errorf("fairBounds() = %q, want the bounds of queue.FairTier", got)
	}
}

// An ID left in a group's backlog by accident (here, a job of tier 4 that
// no longer exists) is dropped by the group's next enqueue, which then
// gets tier 1; Delete takes a job off its group's backlog.
func TestBacklogHealsAndDeleteLeavesIt(t *testing.T) {
	t.Parallel()
	q := newQueue(t, testenv.RedisURL(t), Config{})
	key := groupKey(queue.AIProcessing, "u1")
	ghosts := []redis.Z{{Score: 1, Member: "01GHOSTLOW"}, {Score: 4, Member: "01GHOSTHIGH"}}
	if err := q.rdb.ZAdd(t.Context(), key, ghosts...).Err(); err != nil {
		t.Fatal(err)
	}
	jobs := groupJobs("u1", 2)
	if err := q.Enqueue(t.Context(), jobs...); err != nil {
		t.Fatal(err)
	}
	ids, err := q.rdb.ZRange(t.Context(), key, 0, -1).Result()
	if err != nil || len(ids) != 2 || ids[0] != jobs[0].ID || ids[1] != jobs[1].ID {
		t.Fatalf("backlog after enqueue = %v (%v), want only %s %s", ids, err, jobs[0].ID, jobs[1].ID)
	}
	if n, _ := q.rdb.Exists(t.Context(), taskKey(queue.AIProcessing, jobs[1].ID)).Result(); n != 1 {
		t.Errorf("job was not put in tier 1")
	}
	if err := q.Delete(t.Context(), jobs[0].ID); err != nil {
		t.Fatal(err)
	}
	if ids, _ := q.rdb.ZRange(t.Context(), key, 0, -1).Result(); len(ids) != 1 || ids[0] != jobs[1].ID {
		t.Errorf("backlog after Delete = %v, want %s only", ids, jobs[1].ID)
	}
}
