package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/httpapi"
)

// Issue 10, item 4: /readyz and the admin queue counts show the AI
// breaker's state, and an open breaker does not make the process unready
// (uploads are still accepted; their jobs wait).
func TestAIBreakerStateIsReportedNotFailed(t *testing.T) {
	t.Parallel()
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var st atomic.Pointer[ai.BreakerState]
	st.Store(&ai.BreakerState{State: ai.BreakerClosed, Since: since})
	var storeErr atomic.Bool
	e := newEnv(t, func(d *httpapi.Deps) {
		d.AIBreaker = func() ai.BreakerState { return *st.Load() }
		d.Ready = []httpapi.Check{{Name: "store", Check: func(context.Context) error {
			if storeErr.Load() {
				return errors.New("down")
			}
			return nil
		}}}
	})
	type breaker struct {
		State               string
		Since               time.Time
		ConsecutiveFailures int
		NextProbe           *time.Time
	}
	readyz := func() (int, breaker) {
		r := e.get(t, "/readyz", "")
		var b struct{ AI *breaker }
		if err := json.Unmarshal(r.Body, &b); err != nil || b.AI == nil {
			t.Fatalf("/readyz %s: no ai (%v)", r.Body, err)
		}
		return r.StatusCode, *b.AI
	}
	admin := func() breaker {
		r := e.get(t, "/api/admin/queues", e.token(t, "root", "admin"))
		var b struct{ AIBreaker *breaker }
		if err := json.Unmarshal(r.Body, &b); r.StatusCode != 200 || err != nil || b.AIBreaker == nil {
			t.Fatalf("/api/admin/queues %d %s: no aiBreaker (%v)", r.StatusCode, r.Body, err)
		}
		return *b.AIBreaker
	}

	if code, b := readyz(); code != http.StatusOK || b.State != "closed" || !b.Since.Equal(since) || b.NextProbe != nil {
		t.Fatalf("closed: %d %+v", code, b)
	}
	if b := admin(); b.State != "closed" {
		t.Fatalf("admin closed: %+v", b)
	}

	next := since.Add(2 * time.Second)
	st.Store(&ai.BreakerState{State: ai.BreakerOpen, Since: since, ConsecutiveFailures: 5, NextProbe: next})
	if code, b := readyz(); code != http.StatusOK || b.State != "open" || b.ConsecutiveFailures != 5 || b.NextProbe == nil || !b.NextProbe.Equal(next) {
		t.Fatalf("open: %d %+v; want 200 with the open state", code, b)
	}
	if b := admin(); b.State != "open" || b.ConsecutiveFailures != 5 {
		t.Fatalf("admin open: %+v", b)
	}

	storeErr.Store(true)
	if code, b := readyz(); code != http.StatusServiceUnavailable || b.State != "open" {
		t.Fatalf("store down, breaker open: %d %+v", code, b)
	}
}

// A process without a breaker (built-in analyzer, api process) reports none.
func TestNoAIBreakerNoState(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, path := range []string{"/readyz", "/api/admin/queues"} {
		r := e.get(t, path, e.token(t, "root", "admin"))
		var b map[string]json.RawMessage
		if err := json.Unmarshal(r.Body, &b); err != nil {
			t.Fatal(err)
		}
		if _, ok := b["ai"]; ok {
			t.Errorf("%s: %s", path, r.Body)
		}
		if _, ok := b["aiBreaker"]; ok {
			t.Errorf("%s: %s", path, r.Body)
		}
	}
}
