package realtime_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// token returns a test token for user that expires at exp; fakeAuth accepts
// exactly these. The real JWT check lives in internal/auth.
func token(user string, exp time.Time) string {
	return fmt.Sprintf("test:%s:%d", user, exp.UnixMilli())
}

func validToken(user string) string { return token(user, time.Now().Add(time.Hour)) }

func fakeAuth(tok string) (string, time.Time, error) {
	parts := strings.Split(tok, ":")
	if len(parts) != 3 || parts[0] != "test" || parts[1] == "" {
		return "", time.Time{}, realtime.ErrUnauthorized
	}
	ms, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return "", time.Time{}, realtime.ErrUnauthorized
	}
	exp := time.UnixMilli(ms)
	if !time.Now().Before(exp) {
		return "", time.Time{}, fmt.Errorf("%w: expired", realtime.ErrUnauthorized)
	}
	return parts[1], exp, nil
}

// testServer is a started realtime.Server behind an httptest server on
// loopback, mounted at /socket.io/ as the app mounts it.
type testServer struct {
	*realtime.Server
	bus  *realtime.LocalBus
	http *httptest.Server
	url  string // http://127.0.0.1:port
}

type serverOption func(*realtime.Options)

// startServer starts a server on addr ("" for any free loopback port) and
// stops it when the test ends.
func startServer(t testing.TB, addr string, bus *realtime.LocalBus, opts ...serverOption) *testServer {
	t.Helper()
	if bus == nil {
		bus = realtime.NewLocalBus()
	}
	o := realtime.Options{
		Authenticate: fakeAuth,
		Bus:          bus,
		Logger:       testLogger(t),
	}
	for _, opt := range opts {
		opt(&o)
	}
	rt, err := realtime.New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := rt.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/socket.io/", rt)
	hs := httptest.NewUnstartedServer(mux)
	hs.Listener = ln
	hs.Config.RegisterOnShutdown(rt.Stop)
	hs.Start()
	ts := &testServer{Server: rt, bus: bus, http: hs, url: hs.URL}
	t.Cleanup(ts.close)
	return ts
}

// close stops the realtime server, then the listener, as the app does.
func (ts *testServer) close() {
	ts.Stop()
	ts.http.Close()
}

func (ts *testServer) addr() string { return strings.TrimPrefix(ts.url, "http://") }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// tWriter sends log lines to t.Log, so they show only for failing tests.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	defer func() { _ = recover() }() // a line logged after the test ended
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// eventSchema compiles api/asset-processed-event.schema.json once per test.
func eventSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	sch, err := c.Compile("../../api/asset-processed-event.schema.json")
	if err != nil {
		t.Fatalf("compile schema: %v", err)
	}
	return sch
}

// assetEvent returns the asset_processed payload the pipeline sends for a
// completed asset of user, numbered n.
func assetEvent(user string, n int) pipeline.Event {
	at := time.Date(2026, 11, 29, 1, 2, 3, 450_123_456, time.UTC)
	return pipeline.NewEvent(&asset.Asset{
		ID:              "01JDQ7Y8W2P3K4M5N6Q7R8S9TA",
		UserID:          user,
		Status:          asset.StatusDraft,
		ProcessingJobID: "01JDQ7Y8W2P3K4M5N6Q7R8S9TB",
		AIMetadata:      []byte(`{"provider":"builtin","n":` + strconv.Itoa(n) + `}`),
		Attempts:        1,
		ProcessedAt:     &at,
		EventID:         fmt.Sprintf("evt-%s-%d", user, n),
	})
}

// lines collects JSON lines from a process and lets tests claim the first
// unclaimed line that matches, whatever order lines arrived in.
type lines struct {
	mu      sync.Mutex
	all     []map[string]any
	claimed []bool
	changed chan struct{}
	closed  bool
}

func newLines() *lines { return &lines{changed: make(chan struct{})} }

func (l *lines) add(m map[string]any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, m)
	l.claimed = append(l.claimed, false)
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *lines) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
}

var errNoMatch = errors.New("no matching line")

// claim waits up to timeout for an unclaimed line matching pred.
func (l *lines) claim(pred func(map[string]any) bool, timeout time.Duration) (map[string]any, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		for i, m := range l.all {
			if !l.claimed[i] && pred(m) {
				l.claimed[i] = true
				l.mu.Unlock()
				return m, nil
			}
		}
		changed, closed := l.changed, l.closed
		l.mu.Unlock()
		if closed {
			return nil, fmt.Errorf("%w: the process exited", errNoMatch)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("%w within %v", errNoMatch, timeout)
		}
	}
}

// unclaimed returns the lines nobody claimed that match pred.
func (l *lines) unclaimed(pred func(map[string]any) bool) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for i, m := range l.all {
		if !l.claimed[i] && pred(m) {
			out = append(out, m)
		}
	}
	return out
}
