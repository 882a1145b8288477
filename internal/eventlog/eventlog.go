// Package eventlog keeps each user's realtime events for a retention period,
// so that a client that was away catches up on what it missed (DESIGN §3):
// through Socket.IO connection state recovery, after an app relaunch with
// auth.lastEventId, or over GET /api/events?after=.
//
// The log is filled by Notifier, a decorator of the pipeline's notifier: an
// event is appended before it is published, so an event a socket may have
// received is always in the log, and a failed append fails the publish (the
// pipeline's outbox keeps the event owed and its relay tries again).
package eventlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// DefaultRetention is how long events are kept when EVENT_RETENTION is unset.
const DefaultRetention = 7 * 24 * time.Hour

// Limits of After and of the ids Append accepts.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	MaxIDLen     = 128
)

// ErrUnknownEvent is returned by After for an afterEventID that is not (or no
// longer) in the user's log: it expired, or it was never that user's. The
// caller cannot know what came after it and falls back (a full refetch).
var ErrUnknownEvent = errors.New("eventlog: unknown event id")

// ErrInvalid is returned by Append for an empty user id, an empty or too long
// event id, or data that is not valid JSON.
var ErrInvalid = errors.New("eventlog: invalid event")

// Event is one event as the log returns it.
type Event struct {
	ID   string          // the eventId given to Append
	Data json.RawMessage // the bytes given to Append
	At   time.Time       // the time given to Append, UTC, millisecond precision
}

// Log is a per-user, append-only, ordered event log with a retention.
//
// The contract, which every implementation passes through eventlogtest.TestLog:
//   - Append adds the event at the end of userID's log. It is idempotent: an
//     eventID already in userID's log (appended before, or concurrently) is a
//     no-op that returns nil and keeps the first data. Invalid input:
//     ErrInvalid.
//   - A user's log has one order, the order of the appends' commits, the same
//     for every reader and every process; concurrent appends of one user get
//     distinct positions and none is lost. The logs of two users are
//     independent: nothing of one user is ever returned for another, and an
//     event id of another user is unknown to After.
//   - After returns at most limit events of userID strictly after
//     afterEventID, oldest first; "" means from the oldest event kept. An
//     afterEventID not in userID's log returns ErrUnknownEvent. limit <= 0
//     means DefaultLimit; larger than MaxLimit means MaxLimit. Fewer than
//     limit events means the end of the log was reached.
//   - Last returns the id of userID's newest event, or "" if the log is empty.
//   - Expire deletes the events appended with a time before before, of all
//     users, and returns how many it deleted. An implementation may also
//     expire by itself (a TTL index); events older than the retention may
//     then disappear without a call.
type Log interface {
	Append(ctx context.Context, userID, eventID string, data json.RawMessage, at time.Time) error
	After(ctx context.Context, userID, afterEventID string, limit int) ([]Event, error)
	Last(ctx context.Context, userID string) (string, error)
	Expire(ctx context.Context, before time.Time) (int64, error)
}

// Validate checks Append's arguments; the error wraps ErrInvalid.
func Validate(userID, eventID string, data json.RawMessage) error {
	switch {
	case userID == "":
		return fmt.Errorf("%w: empty user id", ErrInvalid)
	case eventID == "" || len(eventID) > MaxIDLen:
		return fmt.Errorf("%w: event id empty or longer than %d bytes", ErrInvalid, MaxIDLen)
	case !json.Valid(data):
		return fmt.Errorf("%w: data is not valid JSON", ErrInvalid)
	}
	return nil
}

// ClampLimit applies After's rule for limit.
func ClampLimit(limit int) int {
	switch {
	case limit <= 0:
		return DefaultLimit
	case limit > MaxLimit:
		return MaxLimit
	}
	return limit
}
