package eventlog

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Sender publishes an event to a user's connected devices; the realtime
// server is one (pipeline.Notifier has the same method).
type Sender interface {
	Send(ctx context.Context, userID, event string, data any) error
}

// Notifier is a Sender that appends every event named Event to the user's
// Log before it hands it to Next, so the log holds every event a device may
// have received. Its id is the data's top-level string field "eventId"
// (DESIGN §3). If the append fails, Send fails without publishing: the
// caller keeps the event owed and sends it again, and the append of the
// same id is then a no-op. Events of other names go to Next unlogged.
type Notifier struct {
	Log interface {
		Append(ctx context.Context, userID, eventID string, data json.RawMessage, at time.Time) error
	}
	Next  Sender
	Event string
	// Now stamps the appended events (Expire compares with it); nil means
	// time.Now.
	Now func() time.Time
}

// Send logs, then publishes. Next receives the data as the json.RawMessage
// that was logged, so a live event and its replay are the same bytes.
func (n *Notifier) Send(ctx context.Context, userID, event string, data any) error {
	if event != n.Event {
		return n.Next.Send(ctx, userID, event, data)
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("eventlog: encode %s for user %s: %w", event, userID, err)
	}
	id, err := EventID(raw)
	if err != nil {
		return err
	}
	now := time.Now
	if n.Now != nil {
		now = n.Now
	}
	if err := n.Log.Append(ctx, userID, id, raw, now()); err != nil {
		return fmt.Errorf("eventlog: append %s %s: %w", event, id, err)
	}
	return n.Next.Send(ctx, userID, event, json.RawMessage(raw))
}

// EventID returns the top-level string field "eventId" of an event's JSON
// data; the error wraps ErrInvalid when there is none.
func EventID(data json.RawMessage) (string, error) {
	var v struct {
		EventID string `json:"eventId"`
	}
	if err := json.Unmarshal(data, &v); err != nil || v.EventID == "" {
		return "", fmt.Errorf("%w: data has no string field eventId", ErrInvalid)
	}
	return v.EventID, nil
}
