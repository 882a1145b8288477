package redisqueue

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// taskMessage is the part of asynq's task message (the protobuf
// TaskMessage of internal/proto/asynq.proto in asynq v0.26.0) that this
// package writes and reads. asynq offers no batch enqueue and no way to give
// a replayed task a fresh retry count, so this package writes tasks itself,
// in asynq's own encoding and layout; message_test.go checks both against
// asynq's Inspector.
type taskMessage struct {
	Type         string // 1
	Payload      []byte // 2: an envelope
	ID           string // 3
	Queue        string // 4
	Retry        int64  // 5: int32
	Retried      int64  // 6: int32
	ErrorMsg     string // 7
	Timeout      int64  // 8: seconds
	LastFailedAt int64  // 11: Unix seconds
	Retention    int64  // 12: seconds
	CompletedAt  int64  // 13: Unix seconds
}

const (
	wireVarint = 0
	wire64     = 1
	wireBytes  = 2
	wire32     = 5
)

// encode marshals m as proto3 does: fields in number order, zero values
// left out.
func (m *taskMessage) encode() []byte {
	head, tail := m.encodeAround()
	return slices.Concat(head, queueField(m.Queue), tail)
}

// encodeAround is encode in two parts, before and after field 4, the queue
// name, for a script that chooses the queue: it writes queueField of its
// choice between them.
func (m *taskMessage) encodeAround() (head, tail []byte) {
	b := make([]byte, 0, 64+len(m.Payload))
	str := func(field int, s []byte) {
		if len(s) > 0 {
			b = binary.AppendUvarint(b, uint64(field<<3|wireBytes))
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	num := func(field int, v int64) {
		if v != 0 {
			b = binary.AppendUvarint(b, uint64(field<<3|wireVarint))
			b = binary.AppendUvarint(b, uint64(v))
		}
	}
	str(1, []byte(m.Type))
	str(2, m.Payload)
	str(3, []byte(m.ID))
	head, b = b, nil
	num(5, m.Retry)
	num(6, m.Retried)
	str(7, []byte(m.ErrorMsg))
	num(8, m.Timeout)
	num(11, m.LastFailedAt)
	num(12, m.Retention)
	num(13, m.CompletedAt)
	return head, b
}

// queueField is field 4 of a task message. The scripts write it as
// string.char(34, #q) .. q: a tag byte, then the length in one byte, which
// holds for names shorter than 128 bytes (queueName and subQueue keep them
// so).
func queueField(q string) []byte {
	if q == "" {
		return nil
	}
	b := binary.AppendUvarint(nil, 4<<3|wireBytes)
	b = binary.AppendUvarint(b, uint64(len(q)))
	return append(b, q...)
}

// decodeTaskMessage reads the fields of taskMessage and skips the others.
func decodeTaskMessage(b []byte) (taskMessage, error) {
	var m taskMessage
	bad := errors.New("redisqueue: malformed asynq task message")
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return m, bad
		}
		b = b[n:]
		field, wt := int(tag>>3), int(tag&7)
		switch wt {
		case wireVarint:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return m, bad
			}
			b = b[n:]
			switch field {
			case 5:
				m.Retry = int64(int32(v))
			case 6:
				m.Retried = int64(int32(v))
			case 8:
				m.Timeout = int64(v)
			case 11:
				m.LastFailedAt = int64(v)
			case 12:
				m.Retention = int64(v)
			case 13:
				m.CompletedAt = int64(v)
			}
		case wireBytes:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return m, bad
			}
			v := b[n : n+int(l)]
			b = b[n+int(l):]
			switch field {
			case 1:
				m.Type = string(v)
			case 2:
				m.Payload = v
			case 3:
				m.ID = string(v)
			case 4:
				m.Queue = string(v)
			case 7:
				m.ErrorMsg = string(v)
			}
		case wire64:
			if len(b) < 8 {
				return m, bad
			}
			b = b[8:]
		case wire32:
			if len(b) < 4 {
				return m, bad
			}
			b = b[4:]
		default:
			return m, bad
		}
	}
	return m, nil
}

// taskType is the asynq task type of every job of this package.
const taskType = "klectr"

// envelope is the asynq payload of a job: the job's payload and what
// queue.Job carries besides. It never changes during one life of the job;
// Retry writes a new one.
type envelope struct {
	Payload     json.RawMessage `json:"payload"`
	Group       string          `json:"group,omitempty"`
	EnqueuedAt  time.Time       `json:"enqueuedAt"`
	MaxAttempts int             `json:"maxAttempts"`
}

func decodeEnvelope(id string, b []byte) (envelope, error) {
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("redisqueue: job %s: decode envelope: %w", id, err)
	}
	return e, nil
}

// Redis keys. asynq's are "asynq:{<queue>}:…" (internal/base); ours hold
// the dead jobs, which live outside asynq (see the package doc).
const (
	allQueuesKey = "asynq:queues"
	deadSetKey   = "klectr:dead" // sorted set: id by EnqueuedAt, µs
	deadKeyPart  = "klectr:dead:"
	groupKeyPart = "klectr:fair:" // + queue + ":" + group: sorted set of waiting ids by tier
)

// subQueue is the asynq queue that holds the jobs of queue q in a tier:
// q itself for tier 1 (so jobs enqueued before tiers existed stay where
// they are), "q:2" to "q:4" for the others. Queue names have no ':'.
func subQueue(q string, tier int) string {
	if tier == 1 {
		return q
	}
	return q + ":" + strconv.Itoa(tier)
}

// subQueues lists the asynq queues of q, tier 1 first.
func subQueues(q string) []string {
	qs := make([]string, queue.FairTiers)
	for t := range qs {
		qs[t] = subQueue(q, t+1)
	}
	return qs
}

// baseQueue is the queue of sub-queue sq.
func baseQueue(sq string) string {
	q, _, _ := strings.Cut(sq, ":")
	return q
}

func queuePrefix(q string) string       { return "asynq:{" + q + "}:" }
func taskKey(q, id string) string       { return queuePrefix(q) + "t:" + id }
func pendingKey(q string) string        { return queuePrefix(q) + "pending" }
func activeKey(q string) string         { return queuePrefix(q) + "active" }
func scheduledKey(q string) string      { return queuePrefix(q) + "scheduled" }
func retryKey(q string) string          { return queuePrefix(q) + "retry" }
func completedKey(q string) string      { return queuePrefix(q) + "completed" }
func leaseKey(q string) string          { return queuePrefix(q) + "lease" }
func deadKey(id string) string          { return deadKeyPart + id }
func groupKey(q, group string) string   { return groupKeyPart + q + ":" + group }
func enqueueScore(at time.Time) float64 { return float64(at.UnixMicro()) }

// Fields of ours in asynq's task hash (asynq sets only msg, state,
// pending_since and a few it does not use here, and deletes the hash with
// the task, so ours go with it).
const (
	errorsField = "klectr:errors" // JSON array of strings, oldest first
	baseField   = "klectr:base"   // how many of them an earlier life left
)
