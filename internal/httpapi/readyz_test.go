package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klectr/klectr/internal/httpapi"
)

// readyBody is /readyz's reply, ready or not.
type readyBody struct {
	Status string `json:"status"`
	Error  *struct {
		Code, Message string
	} `json:"error"`
	Checks map[string]string `json:"checks"`
}

// Issue 7, defect 8: readiness follows each dependency by name, so a store
// that answers reads but cannot write (a full disk) makes the process not
// ready, and the reply says which dependency it is. The cause is logged,
// once per change, and never sent.
func TestReadyzReportsEachDependency(t *testing.T) {
	t.Parallel()
	var storeErr atomic.Pointer[error]
	ok := func(context.Context) error { return nil }
	e := newEnv(t, func(d *httpapi.Deps) {
		d.Ready = []httpapi.Check{
			{Name: "store", Check: func(context.Context) error {
				if p := storeErr.Load(); p != nil {
					return *p
				}
				return nil
			}},
			{Name: "queue", Check: ok},
			{Name: "bus", Check: ok},
			{Name: "blobs", Check: ok},
		}
	})
	get := func() (int, readyBody) {
		r := e.get(t, "/readyz", "")
		var b readyBody
		if err := json.Unmarshal(r.Body, &b); err != nil {
			t.Fatalf("%s: %v", r.Body, err)
		}
		if strings.Contains(string(r.Body), "disk") {
			t.Errorf("the reply leaks the cause: %s", r.Body)
		}
		return r.StatusCode, b
	}

	code, b := get()
	want := map[string]string{"store": "ok", "queue": "ok", "bus": "ok", "blobs": "ok"}
	if code != http.StatusOK || b.Status != "ready" || !equalMaps(b.Checks, want) {
		t.Fatalf("all ok: %d %+v", code, b)
	}

	full := error(errors.New("sqlitedb: write probe: database or disk is full (13)"))
	storeErr.Store(&full)
	for range 3 {
		code, b = get()
	}
	want["store"] = "unavailable"
	if code != http.StatusServiceUnavailable || b.Error == nil || b.Error.Code != "unavailable" ||
		!strings.Contains(b.Error.Message, "store") || !equalMaps(b.Checks, want) {
		t.Fatalf("store failing: %d %+v", code, b)
	}
	if n := strings.Count(e.logs.String(), "disk is full"); n != 1 {
		t.Errorf("the cause is logged %d times over three probes, want once:\n%s", n, e.logs.String())
	}

	storeErr.Store(nil)
	if code, b = get(); code != http.StatusOK || b.Checks["store"] != "ok" {
		t.Fatalf("after recovery: %d %+v", code, b)
	}
	if !strings.Contains(e.logs.String(), "ready again") {
		t.Errorf("recovery not logged:\n%s", e.logs.String())
	}
}

// A check that hangs is cut off by the probe's own deadline, not the
// caller's.
func TestReadyzBoundsAHangingCheck(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(d *httpapi.Deps) {
		d.Ready = []httpapi.Check{{Name: "queue", Check: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}}}
	})
	r := e.get(t, "/readyz", "")
	if r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), `"queue":"unavailable"`) {
		t.Fatalf("%d %s", r.StatusCode, r.Body)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
