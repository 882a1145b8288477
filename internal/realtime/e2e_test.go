package realtime_test

// End-to-end tests with the official JavaScript client (socket.io-client,
// pinned in test/e2e/package.json). They run when KLECTR_E2E_DIR points at
// test/e2e with node_modules installed; see internal/testenv.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/testenv"
)

// waitLine bounds every wait for something the client must observe.
const waitLine = 15 * time.Second

// harness is one node process running test/e2e/harness.mjs.
type harness struct {
	t     testing.TB
	stdin *json.Encoder
	mu    sync.Mutex // guards stdin
	lines *lines
}

func startHarness(t testing.TB) *harness {
	t.Helper()
	dir := testenv.SocketIOClientDir(t)
	cmd := exec.Command(testenv.Node(t), filepath.Join(dir, "harness.mjs"))
	cmd.Dir = dir
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	h := &harness{t: t, stdin: json.NewEncoder(stdin), lines: newLines()}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer h.lines.close()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("harness printed a non-JSON line %q", sc.Text())
				continue
			}
			h.lines.add(m)
		}
	}()
	t.Cleanup(func() {
		h.send(map[string]any{"op": "exit"})
		_ = stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		<-readDone
		if stderr.Len() > 0 {
			t.Logf("node stderr:\n%s", stderr.String())
		}
	})
	if _, err := h.lines.claim(func(m map[string]any) bool { return m["ev"] == "ready" }, waitLine); err != nil {
		t.Fatalf("harness did not start: %v", err)
	}
	return h
}

func (h *harness) send(cmd map[string]any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.stdin.Encode(cmd) // a dead process shows up as a missing line
}

// connect opens socket name with the client options opts.
func (h *harness) connect(name, url string, opts map[string]any) {
	h.send(map[string]any{"op": "connect", "name": name, "url": url, "opts": opts})
}

// want waits for socket name to report ev with the extra fields given.
func (h *harness) want(name, ev string, fields map[string]any) map[string]any {
	h.t.Helper()
	m, err := h.lines.claim(match(name, ev, fields), waitLine)
	if err != nil {
		h.t.Fatalf("socket %s: want %s %v: %v; lines so far: %v", name, ev, fields, err, h.lines.unclaimed(func(map[string]any) bool { return true }))
	}
	return m
}

func match(name, ev string, fields map[string]any) func(map[string]any) bool {
	return func(m map[string]any) bool {
		if m["name"] != name || m["ev"] != ev {
			return false
		}
		for k, v := range fields {
			if fmt.Sprint(m[k]) != fmt.Sprint(v) {
				return false
			}
		}
		return true
	}
}

// eventData returns the single argument of an "event" line.
func eventData(t testing.TB, m map[string]any) any {
	t.Helper()
	args, _ := m["args"].([]any)
	if len(args) != 1 {
		t.Fatalf("event %v has %d arguments, want 1", m, len(args))
	}
	return args[0]
}

// merge returns the union of client option sets (later ones win).
func merge(sets ...map[string]any) map[string]any {
	o := map[string]any{}
	for _, set := range sets {
		for k, v := range set {
			o[k] = v
		}
	}
	return o
}

func auth(tok string, extra map[string]any) map[string]any {
	o := map[string]any{"auth": map[string]any{"token": tok}}
	for k, v := range extra {
		o[k] = v
	}
	return o
}

var (
	wsOnly      = map[string]any{"transports": []string{"websocket"}}
	pollingOnly = map[string]any{"transports": []string{"polling"}}
)

func send(t testing.TB, ts *testServer, user string, n int) pipeline.Event {
	t.Helper()
	ev := assetEvent(user, n)
	if err := ts.Send(context.Background(), user, pipeline.EventAssetProcessed, ev); err != nil {
		t.Fatalf("Send: %v", err)
	}
	return ev
}

// wantEvent waits for socket name to receive asset_processed with eventId,
// and checks it against the schema and its intended user.
func (h *harness) wantEvent(name, user, eventID string) {
	h.t.Helper()
	m := h.want(name, "event", map[string]any{"event": pipeline.EventAssetProcessed})
	data := eventData(h.t, m)
	if err := eventSchema(h.t).Validate(data); err != nil {
		h.t.Errorf("socket %s received an event that breaks the schema: %v", name, err)
	}
	got, _ := data.(map[string]any)
	if got["userId"] != user || got["eventId"] != eventID {
		h.t.Errorf("socket %s (user %s) received %v, want eventId %s", name, user, got, eventID)
	}
}

func TestE2EWebSocket(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	h := startHarness(t)
	h.connect("a", ts.url, auth(validToken("u1"), wsOnly))
	h.want("a", "connect", map[string]any{"transport": "websocket"})
	ev := send(t, ts, "u1", 1)
	h.wantEvent("a", "u1", ev.EventID)

	// An event the server does not handle still gets its ack, saying so.
	h.send(map[string]any{"op": "emitWithAck", "name": "a", "event": "hello", "args": []any{1}})
	ack := h.want("a", "ack", nil)
	if got := fmt.Sprint(ack["args"]); got != "[map[error:map[code:unknown_event message:the server handles no event \"hello\"]]]" {
		t.Errorf("ack = %s", got)
	}
}

func TestE2EDefaultTransportsUpgrade(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	h := startHarness(t)
	h.connect("a", ts.url, auth(validToken("u1"), nil))
	h.want("a", "open", map[string]any{"transport": "polling"})
	h.want("a", "connect", nil)
	// Sent while the client may be probing the websocket: it must arrive
	// once, on whichever transport carries it.
	first := send(t, ts, "u1", 1)
	h.wantEvent("a", "u1", first.EventID)
	h.want("a", "upgrade", map[string]any{"transport": "websocket"})
	second := send(t, ts, "u1", 2)
	h.wantEvent("a", "u1", second.EventID)
	if extra := h.lines.unclaimed(match("a", "event", nil)); len(extra) > 0 {
		t.Errorf("duplicate or unexpected events: %v", extra)
	}
}

func TestE2EPollingOnly(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	h := startHarness(t)
	h.connect("a", ts.url, auth(validToken("u1"), pollingOnly))
	h.want("a", "connect", map[string]any{"transport": "polling"})
	const n = 50
	for i := range n {
		send(t, ts, "u1", i)
	}
	for i := range n { // in order
		m := h.want("a", "event", nil)
		if id := eventData(t, m).(map[string]any)["eventId"]; id != fmt.Sprintf("evt-u1-%d", i) {
			t.Fatalf("event %d is %v: order not kept", i, id)
		}
	}
}

func TestE2ERefusesBadTokens(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	h := startHarness(t)
	cases := map[string]map[string]any{
		"missing":         wsOnly,
		"malformed":       auth("not-a-token", wsOnly),
		"expired":         auth(token("u1", time.Now().Add(-time.Second)), wsOnly),
		"expired-polling": auth(token("u1", time.Now().Add(-time.Second)), nil),
		"empty-header":    {"transports": []string{"websocket"}, "extraHeaders": map[string]string{"Authorization": "Bearer "}},
	}
	for name, opts := range cases {
		h.connect(name, ts.url, opts)
	}
	for name := range cases {
		h.want(name, "connect_error", map[string]any{"message": "unauthorized"})
	}
	// A native client's Authorization header is accepted like auth.token.
	h.connect("header", ts.url, map[string]any{"extraHeaders": map[string]string{"Authorization": "Bearer " + validToken("u2")}})
	h.want("header", "connect", nil)
	ev := send(t, ts, "u2", 1)
	h.wantEvent("header", "u2", ev.EventID)
}

func TestE2EDevicesAndIsolation(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	h := startHarness(t)
	users := []string{"u1", "u2", "u3", "u4"}
	transports := []map[string]any{wsOnly, nil, pollingOnly}
	var names []string
	for _, u := range users {
		for i, tr := range transports { // every user on three devices
			name := fmt.Sprintf("%s-d%d", u, i)
			h.connect(name, ts.url, auth(validToken(u), tr))
			names = append(names, name)
		}
	}
	for _, name := range names {
		h.want(name, "connect", nil)
	}
	const perUser = 20
	for i := range perUser {
		for _, u := range users {
			send(t, ts, u, i)
		}
	}
	sch := eventSchema(t)
	for _, name := range names {
		user := name[:2]
		for range perUser {
			m := h.want(name, "event", nil)
			data := eventData(t, m)
			if err := sch.Validate(data); err != nil {
				t.Errorf("%s: event breaks the schema: %v", name, err)
			}
			if got := data.(map[string]any)["userId"]; got != user {
				t.Fatalf("socket %s of %s received an event of %v", name, user, got)
			}
		}
	}
	// Nothing else may be on the way: one more event per user, and it must
	// be the next thing each socket sees.
	for _, u := range users {
		send(t, ts, u, perUser)
	}
	for _, name := range names {
		h.wantEvent(name, name[:2], fmt.Sprintf("evt-%s-%d", name[:2], perUser))
	}
	if extra := h.lines.unclaimed(func(m map[string]any) bool { return m["ev"] == "event" }); len(extra) > 0 {
		t.Errorf("%d duplicate or misdelivered events, first %v", len(extra), extra[0])
	}
}

func TestE2EReconnectsAfterRestart(t *testing.T) {
	t.Parallel()
	bus := realtime.NewLocalBus()
	// Short heartbeats: a client caught in the middle of its polling →
	// websocket upgrade by the restart relies on its ping timeout.
	beat := func(o *realtime.Options) { o.PingInterval, o.PingTimeout = time.Second, time.Second }
	first := startServer(t, "", bus, beat)
	addr := first.addr()
	h := startHarness(t)
	fast := map[string]any{"reconnectionDelay": 50, "reconnectionDelayMax": 200, "randomizationFactor": 0}
	for name, tr := range map[string]map[string]any{"ws": wsOnly, "default": nil, "polling": pollingOnly} {
		opts := auth(validToken("u1"), fast)
		for k, v := range tr {
			opts[k] = v
		}
		h.connect(name, first.url, opts)
		h.want(name, "connect", nil)
	}
	first.close()
	for _, name := range []string{"ws", "default", "polling"} {
		// "transport close", "transport error" for a poller that was
		// between two polls, or "ping timeout" for one that was pausing
		// its poller for an upgrade: each makes the client reconnect.
		m := h.want(name, "disconnect", nil)
		if r := m["reason"]; r != "transport close" && r != "transport error" && r != "ping timeout" {
			t.Errorf("%s disconnected with reason %v; the client would not reconnect by itself", name, r)
		}
	}
	second := startServer(t, addr, bus, beat)
	for _, name := range []string{"ws", "default", "polling"} {
		h.want(name, "reconnect", nil)
		h.want(name, "connect", nil)
	}
	ev := send(t, second, "u1", 1)
	for _, name := range []string{"ws", "default", "polling"} {
		h.wantEvent(name, "u1", ev.EventID)
	}
}

func TestE2EChurn(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		opts   map[string]any
		rounds int
	}{
		{"websocket", wsOnly, 1000},
		{"default", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, "", nil, func(o *realtime.Options) { o.MaxConnsPerUser = 50 })
			h := startHarness(t)
			h.connect("witness", ts.url, auth(validToken("u1"), wsOnly))
			h.want("witness", "connect", nil)
			h.send(map[string]any{"op": "churn", "name": "c", "url": ts.url, "opts": auth(validToken("u1"), tc.opts), "rounds": tc.rounds, "lanes": 4})
			done, err := h.lines.claim(match("c", "churn_done", nil), 5*time.Minute)
			if err != nil {
				t.Fatalf("churn: %v; errors: %v", err, h.lines.unclaimed(func(m map[string]any) bool { return m["ev"] == "error" || m["ev"] == "connect_error" }))
			}
			live := []string{"witness"}
			for _, n := range done["live"].([]any) {
				live = append(live, n.(string))
			}
			if len(live) != 5 {
				t.Fatalf("live sockets after churn: %v, want the witness and 4 lanes", live)
			}
			ev := send(t, ts, "u1", 1)
			for _, name := range live {
				h.wantEvent(name, "u1", ev.EventID)
			}
			if errs := h.lines.unclaimed(func(m map[string]any) bool { return m["ev"] == "connect_error" || m["ev"] == "error" }); len(errs) > 0 {
				t.Errorf("errors during churn: %v", errs)
			}
			extra := h.lines.unclaimed(func(m map[string]any) bool { return m["ev"] == "event" })
			slices.SortFunc(extra, func(a, b map[string]any) int { return 0 })
			if len(extra) > 0 {
				t.Errorf("events on sockets that had disconnected: %v", extra)
			}
		})
	}
}

func TestE2ETokenExpiryDisconnects(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	h := startHarness(t)
	exp := time.UnixMilli(time.Now().Add(3 * time.Second).UnixMilli()) // what the token carries
	// A client that reconnected by itself would do so at once.
	eager := map[string]any{"reconnectionDelay": 1, "randomizationFactor": 0}
	h.connect("ws", ts.url, auth(token("u1", exp), merge(wsOnly, eager)))
	h.connect("polling", ts.url, auth(token("u1", exp), merge(pollingOnly, eager)))
	h.want("ws", "connect", nil)
	h.want("polling", "connect", nil)
	for _, name := range []string{"ws", "polling"} {
		m := h.want(name, "disconnect", map[string]any{"reason": "io server disconnect"})
		// 2 ms for the two processes' clocks, read differently.
		if at := time.UnixMicro(int64(m["t"].(float64) * 1000)); at.Before(exp.Add(-2 * time.Millisecond)) {
			t.Errorf("%s disconnected at %v, before its token expired at %v", name, at, exp)
		}
	}
	// The official client does not reconnect after "io server disconnect"
	// (the app connects again with a fresh token): a whole new connection
	// later, neither socket has tried.
	h.connect("witness", ts.url, auth(validToken("u2"), nil))
	h.want("witness", "connect", nil)
	if got := h.lines.unclaimed(func(m map[string]any) bool {
		return (m["name"] == "ws" || m["name"] == "polling") && (m["ev"] == "reconnect" || m["ev"] == "connect_error" || m["ev"] == "connect")
	}); len(got) > 0 {
		t.Errorf("client retried by itself with an expired token: %v", got)
	}
}
