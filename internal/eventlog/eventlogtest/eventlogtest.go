// Package eventlogtest is the conformance suite of eventlog.Log. Every
// backend runs TestLog unchanged (DESIGN §6.4).
package eventlogtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
)

// TestLog checks every clause of the eventlog.Log contract against logs made
// by newLog. Each call must return a fresh, empty log and release it through
// t.Cleanup; subtests run in parallel, each on its own log.
func TestLog(t *testing.T, newLog func(t *testing.T) eventlog.Log) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, l eventlog.Log)
	}{
		{"Order", testOrder},
		{"UnknownAfter", testUnknownAfter},
		{"Idempotent", testIdempotent},
		{"ConcurrentAppends", testConcurrentAppends},
		{"ConcurrentDuplicates", testConcurrentDuplicates},
		{"Isolation", testIsolation},
		{"Expire", testExpire},
		{"Paging", testPaging},
		{"Invalid", testInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newLog(t))
		})
	}
}

var base = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func data(user, id string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"eventId":%q,"userId":%q,"aiMetadata":{"a.b":"$x","n":[1,2]}}`, id, user))
}

func appendN(t *testing.T, l eventlog.Log, user, prefix string, n int, at time.Time) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%03d", prefix, i)
		if err := l.Append(ctx(t), user, ids[i], data(user, ids[i]), at.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("Append %s: %v", ids[i], err)
		}
	}
	return ids
}

// all reads userID's log after afterID to its end, in pages of limit.
func all(t *testing.T, l eventlog.Log, user, after string, limit int) []eventlog.Event {
	t.Helper()
	var out []eventlog.Event
	for range 10_000 {
		page, err := l.After(ctx(t), user, after, limit)
		if err != nil {
			t.Fatalf("After(%q, %q, %d): %v", user, after, limit, err)
		}
		out = append(out, page...)
		if len(page) < limit {
			return out
		}
		after = page[len(page)-1].ID
	}
	t.Fatal("After never reached the end of the log")
	return nil
}

func ids(evs []eventlog.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

func testOrder(t *testing.T, l eventlog.Log) {
	if last, err := l.Last(ctx(t), "u1"); err != nil || last != "" {
		t.Fatalf("Last of an empty log = %q, %v; want \"\", nil", last, err)
	}
	if evs, err := l.After(ctx(t), "u1", "", 10); err != nil || len(evs) != 0 {
		t.Fatalf("After of an empty log = %v, %v", evs, err)
	}
	// Ids that do not sort in append order, and times that go backwards:
	// the order is the appends', not the ids' or the times'.
	want := []string{"c", "a", "b", "e", "d"}
	for i, id := range want {
		at := base.Add(-time.Duration(i) * time.Minute).Add(1234567 * time.Nanosecond)
		if err := l.Append(ctx(t), "u1", id, data("u1", id), at); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	got, err := l.After(ctx(t), "u1", "", 10)
	if err != nil {
		t.Fatalf("After: %v", err)
	}
	if !slices.Equal(ids(got), want) {
		t.Fatalf("After(\"\") = %v, want %v", ids(got), want)
	}
	for i, e := range got {
		wantAt := base.Add(-time.Duration(i) * time.Minute).Add(time.Millisecond)
		if !e.At.Equal(wantAt) || e.At.Location() != time.UTC {
			t.Errorf("event %s At = %v, want %v in UTC (millisecond precision)", e.ID, e.At, wantAt)
		}
		var a, b any
		if json.Unmarshal(e.Data, &a) != nil || json.Unmarshal(data("u1", e.ID), &b) != nil || fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("event %s data = %s, want %s", e.ID, e.Data, data("u1", e.ID))
		}
	}
	got, err = l.After(ctx(t), "u1", "a", 10)
	if err != nil || !slices.Equal(ids(got), []string{"b", "e", "d"}) {
		t.Errorf("After(a) = %v, %v; want [b e d] (strictly after)", ids(got), err)
	}
	got, err = l.After(ctx(t), "u1", "d", 10)
	if err != nil || len(got) != 0 {
		t.Errorf("After(newest) = %v, %v; want nothing", ids(got), err)
	}
	if last, err := l.Last(ctx(t), "u1"); err != nil || last != "d" {
		t.Errorf("Last = %q, %v; want d", last, err)
	}
}

func testUnknownAfter(t *testing.T, l eventlog.Log) {
	appendN(t, l, "u1", "e", 3, base)
	appendN(t, l, "u2", "f", 1, base)
	for _, after := range []string{"nope", "f-000"} { // never, and another user's
		if evs, err := l.After(ctx(t), "u1", after, 10); !errors.Is(err, eventlog.ErrUnknownEvent) {
			t.Errorf("After(u1, %q) = %v, %v; want ErrUnknownEvent", after, ids(evs), err)
		}
	}
}

func testIdempotent(t *testing.T, l eventlog.Log) {
	appendN(t, l, "u1", "e", 3, base)
	if err := l.Append(ctx(t), "u1", "e-001", json.RawMessage(`{"eventId":"e-001","other":true}`), base.Add(time.Hour)); err != nil {
		t.Fatalf("Append again: %v", err)
	}
	got := all(t, l, "u1", "", 10)
	if !slices.Equal(ids(got), []string{"e-000", "e-001", "e-002"}) {
		t.Fatalf("after a repeated append the log is %v", ids(got))
	}
	if string(got[1].Data) == `{"eventId":"e-001","other":true}` || !got[1].At.Equal(base.Add(time.Second)) {
		t.Errorf("the repeat replaced the first append: %s at %v", got[1].Data, got[1].At)
	}
	// The same id under another user is that user's own event.
	if err := l.Append(ctx(t), "u2", "e-001", data("u2", "e-001"), base); err != nil {
		t.Fatalf("Append for u2: %v", err)
	}
	if got := all(t, l, "u2", "", 10); !slices.Equal(ids(got), []string{"e-001"}) {
		t.Errorf("u2's log = %v", ids(got))
	}
}

func testConcurrentAppends(t *testing.T, l eventlog.Log) {
	const writers, each = 8, 15
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%d-%03d", w, i)
				if err := l.Append(ctx(t), "u1", id, data("u1", id), base); err != nil {
					errs <- fmt.Errorf("Append %s: %w", id, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := ids(all(t, l, "u1", "", 7))
	if len(got) != writers*each {
		t.Fatalf("the log has %d events, want %d: %v", len(got), writers*each, got)
	}
	seen := map[string]bool{}
	next := make([]int, writers)
	for _, id := range got {
		if seen[id] {
			t.Fatalf("event %s twice in %v", id, got)
		}
		seen[id] = true
		var w, i int
		fmt.Sscanf(id, "w%d-%d", &w, &i)
		if i != next[w] { // each writer appended in sequence
			t.Fatalf("writer %d's event %d came before its event %d: %v", w, i, next[w], got)
		}
		next[w]++
	}
	// Every reader sees that one order.
	again := ids(all(t, l, "u1", "", 50))
	if !slices.Equal(got, again) {
		t.Errorf("two reads disagree on the order:\n%v\n%v", got, again)
	}
}

func testConcurrentDuplicates(t *testing.T, l eventlog.Log) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			if err := l.Append(ctx(t), "u1", "same", data("u1", "same"), base); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Append of one id: %v", err)
	}
	if got := ids(all(t, l, "u1", "", 10)); !slices.Equal(got, []string{"same"}) {
		t.Errorf("log after 8 concurrent appends of one id: %v", got)
	}
}

func testIsolation(t *testing.T, l eventlog.Log) {
	for i := range 5 {
		for _, u := range []string{"u1", "u2", "u1/x", "u"} {
			id := fmt.Sprintf("%s-%d", u, i)
			if err := l.Append(ctx(t), u, id, data(u, id), base); err != nil {
				t.Fatalf("Append: %v", err)
			}
		}
	}
	for _, u := range []string{"u1", "u2", "u1/x", "u", "u3"} {
		got := all(t, l, u, "", 3)
		if u == "u3" {
			if len(got) != 0 {
				t.Errorf("a user without events got %v", ids(got))
			}
			continue
		}
		if len(got) != 5 {
			t.Errorf("%s has %d events, want 5: %v", u, len(got), ids(got))
		}
		for i, e := range got {
			if e.ID != fmt.Sprintf("%s-%d", u, i) {
				t.Errorf("%s's log holds %s at %d", u, e.ID, i)
			}
		}
		if last, _ := l.Last(ctx(t), u); last != fmt.Sprintf("%s-4", u) {
			t.Errorf("Last(%s) = %q", u, last)
		}
	}
}

func testExpire(t *testing.T, l eventlog.Log) {
	// Recent times, so that a backend expiring by itself keeps them.
	now := time.Now().UTC().Truncate(time.Millisecond)
	old := appendN(t, l, "u1", "e", 5, now.Add(-time.Hour))
	appendN(t, l, "u2", "f", 2, now.Add(-time.Hour+time.Second))
	n, err := l.Expire(ctx(t), now.Add(-time.Hour+2*time.Second))
	if err != nil {
		t.Fatalf("Expire: %v", err)
	}
	if n != 3 {
		t.Errorf("Expire deleted %d events, want 3 (e-000, e-001, f-000)", n)
	}
	if got := ids(all(t, l, "u1", "", 10)); !slices.Equal(got, old[2:]) {
		t.Errorf("u1 after Expire: %v, want %v", got, old[2:])
	}
	if got := ids(all(t, l, "u2", "", 10)); !slices.Equal(got, []string{"f-001"}) {
		t.Errorf("u2 after Expire: %v", got)
	}
	if _, err := l.After(ctx(t), "u1", old[1], 10); !errors.Is(err, eventlog.ErrUnknownEvent) {
		t.Errorf("After(an expired id) = %v, want ErrUnknownEvent", err)
	}
	// Appends after an expiry go after what is left.
	if err := l.Append(ctx(t), "u1", "late", data("u1", "late"), now); err != nil {
		t.Fatal(err)
	}
	if got, err := l.After(ctx(t), "u1", old[4], 10); err != nil || !slices.Equal(ids(got), []string{"late"}) {
		t.Errorf("After(newest before expiry) = %v, %v", ids(got), err)
	}
	if n, err := l.Expire(ctx(t), now.Add(time.Second)); err != nil || n != 5 {
		t.Errorf("Expire(everything) = %d, %v; want 5", n, err)
	}
	if last, err := l.Last(ctx(t), "u1"); err != nil || last != "" {
		t.Errorf("Last after expiring everything = %q, %v", last, err)
	}
	// A log emptied by expiry orders new appends after each other, and the
	// expired ids stay unknown.
	appendN(t, l, "u1", "g", 3, now)
	if got := ids(all(t, l, "u1", "", 10)); !slices.Equal(got, []string{"g-000", "g-001", "g-002"}) {
		t.Errorf("u1 after refilling: %v", got)
	}
	if _, err := l.After(ctx(t), "u1", "late", 10); !errors.Is(err, eventlog.ErrUnknownEvent) {
		t.Errorf("After(an expired id) = %v, want ErrUnknownEvent", err)
	}
}

func testPaging(t *testing.T, l eventlog.Log) {
	want := appendN(t, l, "u1", "e", eventlog.DefaultLimit+5, base)
	page, err := l.After(ctx(t), "u1", "", 0)
	if err != nil || len(page) != eventlog.DefaultLimit {
		t.Fatalf("After with limit 0 returned %d events, %v; want DefaultLimit (%d)", len(page), err, eventlog.DefaultLimit)
	}
	for _, limit := range []int{1, 10, 35, eventlog.MaxLimit + 1} {
		if got := ids(all(t, l, "u1", "", limit)); !slices.Equal(got, want) {
			t.Errorf("paging by %d: %d events, want %d in order", limit, len(got), len(want))
		}
	}
	page, err = l.After(ctx(t), "u1", want[9], 10)
	if err != nil || !slices.Equal(ids(page), want[10:20]) {
		t.Errorf("After(e-009, 10) = %v, %v", ids(page), err)
	}
}

func testInvalid(t *testing.T, l eventlog.Log) {
	long := string(make([]byte, eventlog.MaxIDLen+1))
	for name, c := range map[string]struct {
		user, id string
		data     json.RawMessage
	}{
		"empty user": {"", "e", data("", "e")},
		"empty id":   {"u1", "", data("u1", "")},
		"long id":    {"u1", long, data("u1", "x")},
		"bad json":   {"u1", "e", json.RawMessage(`{"eventId":`)},
		"no data":    {"u1", "e", nil},
	} {
		if err := l.Append(ctx(t), c.user, c.id, c.data, base); !errors.Is(err, eventlog.ErrInvalid) {
			t.Errorf("%s: Append = %v, want ErrInvalid", name, err)
		}
	}
	if got := all(t, l, "u1", "", 10); len(got) != 0 {
		t.Errorf("refused appends left %v", ids(got))
	}
}
