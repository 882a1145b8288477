package realtime_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/realtime"
)

// logBuffer collects a server's log lines, safe for concurrent writers.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogsCarryNoSessionID: the sid is the credential of a polling client,
// so no log line may hold it, at any level, through a whole connect, poll,
// upgrade, event, disconnect and close cycle, nor through protocol errors.
func TestLogsCarryNoSessionID(t *testing.T) {
	t.Parallel()
	logs := &logBuffer{}
	ts := startServer(t, "", nil, func(o *realtime.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	w := wire{t, ts}
	var secrets []string

	sid, _ := w.openPolling()
	secrets = append(secrets, sid)
	if status, _ := w.post(sid, `40{"token":"`+validToken("u1")+`"}`); status != http.StatusOK {
		t.Fatalf("CONNECT: %d", status)
	}
	_, reply := w.get(sid)
	var connected struct{ SID string }
	if err := json.Unmarshal([]byte(strings.TrimPrefix(reply, "40")), &connected); err != nil || connected.SID == "" {
		t.Fatalf("CONNECT reply %q: %v", reply, err)
	}
	secrets = append(secrets, connected.SID)

	pending := make(chan string, 1)
	go func() { _, body := w.get(sid); pending <- body }()
	c := w.dial(sid)
	write(t, c, "2probe")
	if got := read(t, c); got != "3probe" {
		t.Fatalf("probe answer %q", got)
	}
	select {
	case <-pending:
	case <-time.After(10 * time.Second):
		t.Fatal("the paused poll was not released")
	}
	write(t, c, "5")
	if err := ts.Send(context.Background(), "u1", "e", 1); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c); got != `42["e",1]` {
		t.Fatalf("event after the upgrade %q", got)
	}
	write(t, c, "41") // leaves the namespace
	write(t, c, "40{\"token\":\""+validToken("u1")+"\"}")
	_ = read(t, c)
	write(t, c, "9") // a protocol error closes the connection
	readErr(t, c, 10*time.Second)

	// A second session that ends on a bad POST and on a timeout.
	sid2, _ := w.openPolling()
	secrets = append(secrets, sid2)
	w.post(sid2, "4x")
	w.get(sid2)

	out := logs.String()
	if !strings.Contains(out, "socket connected") {
		t.Fatalf("the cycle logged nothing to check:\n%s", out)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("a session id (%s…) is in the logs:\n%s", s[:4], out)
		}
	}
	if !strings.Contains(out, "conn=") {
		t.Errorf("no line carries the conn hash that correlates a connection's lines")
	}
}

// TestSessionIDsHave128Bits: the ids are base64url of at least 16 random
// bytes.
func TestSessionIDsHave128Bits(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	seen := map[string]bool{}
	for range 20 {
		sid, _ := w.openPolling()
		b, err := base64.RawURLEncoding.DecodeString(sid)
		if err != nil || len(b) < 16 {
			t.Fatalf("sid %q: %d bytes (%v), want at least 16", sid, len(b), err)
		}
		if seen[sid] {
			t.Fatalf("sid %q twice", sid)
		}
		seen[sid] = true
	}
}

// TestStolenSidIsRefused: a session opened with a native client's valid
// Authorization header is bound to that user; its sid alone, or with
// another user's token, neither polls, posts nor upgrades it. A browser
// session (no header) refuses a request with another user's token.
func TestStolenSidIsRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	owner := http.Header{"Authorization": {"Bearer " + validToken("u2")}}
	status, body := w.do(http.MethodGet, w.endpoint("polling", ""), "", owner)
	if status != http.StatusOK {
		t.Fatalf("handshake: %d %q", status, body)
	}
	var h struct{ SID string }
	_ = json.Unmarshal([]byte(body[1:]), &h)
	sid := h.SID
	if status, _ := w.do(http.MethodPost, w.endpoint("polling", sid), "40", owner); status != http.StatusOK {
		t.Fatalf("CONNECT with the owner's header: %d", status)
	}
	if err := ts.Send(context.Background(), "u2", "secret", 1); err != nil {
		t.Fatal(err)
	}
	thief := map[string]http.Header{
		"no header":      nil,
		"another user":   {"Authorization": {"Bearer " + validToken("u3")}},
		"invalid token":  {"Authorization": {"Bearer nope"}},
		"expired token":  {"Authorization": {"Bearer " + token("u2", time.Now().Add(-time.Minute))}},
		"another scheme": {"Authorization": {"Basic dTI6eA=="}},
	}
	for name, hdr := range thief {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			if status, body := w.do(method, w.endpoint("polling", sid), "41", hdr); status != http.StatusForbidden || strings.Contains(body, "secret") {
				t.Errorf("%s, %s with the sid: %d %q, want 403", name, method, status, body)
			}
		}
		if status, _ := w.do(http.MethodGet, w.endpoint("websocket", sid), "", hdr); status != http.StatusForbidden {
			t.Errorf("%s, upgrade with the sid: %d, want 403", name, status)
		}
	}
	if _, body := w.do(http.MethodGet, w.endpoint("polling", sid), "", owner); !strings.Contains(body, `"secret"`) {
		t.Errorf("the owner's poll got %q, want the event (the session must have survived)", body)
	}

	browser := w.connectPolling(validToken("u1"))
	if status, _ := w.do(http.MethodGet, w.endpoint("polling", browser), "", thief["another user"]); status != http.StatusForbidden {
		t.Errorf("another user's token on a browser session: %d, want 403", status)
	}
	if status, _ := w.do(http.MethodPost, w.endpoint("polling", browser), "3", nil); status != http.StatusOK {
		t.Errorf("the browser session without a header: %d, want 200", status)
	}
}
