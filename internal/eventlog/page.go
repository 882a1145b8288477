package eventlog

import (
	"context"
	"encoding/json"
)

// Limits of GET /api/events?limit=.
const (
	DefaultPageLimit = 50
	MaxPageLimit     = 100
)

// Page is the body of GET /api/events?after=&limit=: the caller's events
// after "after", oldest first, each exactly as the socket sends it
// (asset_processed). HasMore says another page follows: ask again with
// after = the last event's eventId.
type Page struct {
	Events  []json.RawMessage `json:"events"`
	HasMore bool              `json:"hasMore"`
}

// Reader is what ReadPage needs of a Log.
type Reader interface {
	After(ctx context.Context, userID, afterEventID string, limit int) ([]Event, error)
}

// ReadPage reads one page of userID's log for GET /api/events. limit must
// be 1..MaxPageLimit (the handler answers 400 otherwise; absent means
// DefaultPageLimit). An after that is not in the user's log returns
// ErrUnknownEvent: the client cannot catch up from it and refetches its
// assets instead.
func ReadPage(ctx context.Context, r Reader, userID, after string, limit int) (Page, error) {
	evs, err := r.After(ctx, userID, after, limit+1)
	if err != nil {
		return Page{}, err
	}
	p := Page{Events: make([]json.RawMessage, 0, min(len(evs), limit))}
	if len(evs) > limit {
		evs, p.HasMore = evs[:limit], true
	}
	for _, e := range evs {
		p.Events = append(p.Events, e.Data)
	}
	return p, nil
}
