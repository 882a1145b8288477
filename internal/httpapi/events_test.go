package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/sqlitelog"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// newEventLog is a real embedded event log in a temporary SQLite file.
func newEventLog(t *testing.T) *sqlitelog.Log {
	t.Helper()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := sqlitelog.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// appendEvents appends n asset_processed events of user and returns their ids.
func appendEvents(t *testing.T, l eventlog.Log, user string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = ulid.Make().String()
		data := fmt.Sprintf(`{"eventId":%q,"assetId":%q,"jobId":%q,"userId":%q,"status":"completed","aiMetadata":{"n":%d},"error":null,"attempts":1,"processedAt":"2026-01-02T03:04:05.678Z"}`,
			ids[i], ulid.Make().String(), ulid.Make().String(), user, i)
		if err := l.Append(context.Background(), user, ids[i], json.RawMessage(data), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

type eventsPage struct {
	Events []struct {
		EventID string `json:"eventId"`
		UserID  string `json:"userId"`
	} `json:"events"`
	HasMore bool `json:"hasMore"`
}

// Issue 10, item 1: GET /api/events is the caller's log over HTTP, paged,
// oldest first; an after that is expired or not the caller's is 410.
func TestListEvents(t *testing.T) {
	t.Parallel()
	l := newEventLog(t)
	e := newEnv(t, func(d *httpapi.Deps) { d.Events = l })
	alice := appendEvents(t, l, "alice", 5)
	bob := appendEvents(t, l, "bob", 2)
	token := e.token(t, "alice", "")
	page := func(query string) eventsPage {
		t.Helper()
		r := e.get(t, "/api/events"+query, token)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", query, r.StatusCode, r.Body)
		}
		var p eventsPage
		if err := json.Unmarshal(r.Body, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ids := func(p eventsPage) []string {
		var out []string
		for _, ev := range p.Events {
			if ev.UserID != "alice" {
				t.Fatalf("another user's event: %+v", ev)
			}
			out = append(out, ev.EventID)
		}
		return out
	}

	if p := page(""); p.HasMore || strings.Join(ids(p), ",") != strings.Join(alice, ",") {
		t.Fatalf("all: %+v, want %v", p, alice)
	}
	var got []string
	after := ""
	for range 10 {
		p := page("?limit=2&after=" + after)
		got = append(got, ids(p)...)
		if !p.HasMore {
			break
		}
		after = got[len(got)-1]
	}
	if strings.Join(got, ",") != strings.Join(alice, ",") {
		t.Fatalf("paged by 2: %v, want %v", got, alice)
	}
	if p := page("?after=" + alice[4]); len(p.Events) != 0 || p.HasMore {
		t.Fatalf("after the newest: %+v", p)
	}
	if p := page("?after=" + alice[1] + "&limit=2"); strings.Join(ids(p), ",") != strings.Join(alice[2:4], ",") || !p.HasMore {
		t.Fatalf("after the second, 2: %+v", p)
	}

	for name, query := range map[string]string{
		"never appended": "?after=" + ulid.Make().String(),
		"another user's": "?after=" + bob[0],
	} {
		r := e.get(t, "/api/events"+query, token)
		r.wantError(t, http.StatusGone, "unknown_event")
		if strings.Contains(string(r.Body), "bob") {
			t.Errorf("%s: the reply mentions the other user: %s", name, r.Body)
		}
	}
	for _, query := range []string{"?limit=0", "?limit=101", "?limit=x", "?after=" + strings.Repeat("A", 129)} {
		e.get(t, "/api/events"+query, token, doOptions{noRequestCheck: true}).wantError(t, http.StatusBadRequest, "bad_request")
	}
	e.get(t, "/api/events", "", doOptions{noRequestCheck: true}).wantError(t, http.StatusUnauthorized, "unauthorized")
}

// An absent limit is the default page size.
func TestListEventsDefaultLimit(t *testing.T) {
	t.Parallel()
	l := newEventLog(t)
	e := newEnv(t, func(d *httpapi.Deps) { d.Events = l })
	appendEvents(t, l, "alice", eventlog.DefaultPageLimit+1)
	r := e.get(t, "/api/events", e.token(t, "alice", ""))
	var p eventsPage
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Events) != eventlog.DefaultPageLimit || !p.HasMore {
		t.Fatalf("%d events, hasMore %v", len(p.Events), p.HasMore)
	}
}

type failingEvents struct{}

func (failingEvents) After(context.Context, string, string, int) ([]eventlog.Event, error) {
	return nil, errors.New("database is locked")
}

func TestListEventsUnavailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(d *httpapi.Deps) { d.Events = failingEvents{} })
	r := e.get(t, "/api/events", e.token(t, "alice", ""))
	r.wantError(t, http.StatusServiceUnavailable, "unavailable")
	if strings.Contains(string(r.Body), "locked") {
		t.Fatalf("the cause leaks: %s", r.Body)
	}
}
