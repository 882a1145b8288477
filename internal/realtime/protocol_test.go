package realtime_test

// Wire-level tests: a raw HTTP and websocket client speaks Engine.IO v4 /
// Socket.IO v5 to the server and checks the frames.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
)

// wire is a raw Engine.IO client of one test server.
type wire struct {
	t  testing.TB
	ts *testServer
}

func (w wire) endpoint(transport, sid string) string {
	u := w.ts.url + "/socket.io/?EIO=4&transport=" + transport
	if sid != "" {
		u += "&sid=" + sid
	}
	return u
}

func (w wire) do(method, url, body string, header http.Header) (int, string) {
	w.t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		w.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (w wire) get(sid string) (int, string) {
	w.t.Helper()
	return w.do(http.MethodGet, w.endpoint("polling", sid), "", nil)
}

func (w wire) post(sid, body string) (int, string) {
	w.t.Helper()
	return w.do(http.MethodPost, w.endpoint("polling", sid), body, nil)
}

// openPolling does the polling handshake and returns the open packet.
func (w wire) openPolling() (sid string, h map[string]any) {
	w.t.Helper()
	status, body := w.get("")
	if status != http.StatusOK || !strings.HasPrefix(body, "0") {
		w.t.Fatalf("handshake: %d %q", status, body)
	}
	if err := json.Unmarshal([]byte(body[1:]), &h); err != nil {
		w.t.Fatalf("open packet %q: %v", body, err)
	}
	return h["sid"].(string), h
}

// connectPolling opens a polling session and completes CONNECT for tok.
func (w wire) connectPolling(tok string) string {
	w.t.Helper()
	sid, _ := w.openPolling()
	if status, body := w.post(sid, `40{"token":"`+tok+`"}`); status != http.StatusOK || body != "ok" {
		w.t.Fatalf("POST CONNECT: %d %q", status, body)
	}
	if _, body := w.get(sid); !strings.HasPrefix(body, `40{"sid":"`) {
		w.t.Fatalf("CONNECT reply %q", body)
	}
	return sid
}

func (w wire) dial(sid string) *websocket.Conn {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(w.endpoint("websocket", sid), "http"), nil)
	if err != nil {
		w.t.Fatalf("dial: %v", err)
	}
	w.t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func read(t testing.TB, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

func write(t testing.TB, c *websocket.Conn, s string) {
	t.Helper()
	if err := c.Write(context.Background(), websocket.MessageText, []byte(s)); err != nil {
		t.Fatalf("write %q: %v", s, err)
	}
}

// connectWS opens a websocket session and completes CONNECT for tok.
func (w wire) connectWS(tok string) *websocket.Conn {
	w.t.Helper()
	c := w.dial("")
	if open := read(w.t, c); !strings.HasPrefix(open, "0{") {
		w.t.Fatalf("open packet %q", open)
	}
	write(w.t, c, `40{"token":"`+tok+`"}`)
	if reply := read(w.t, c); !strings.HasPrefix(reply, `40{"sid":"`) {
		w.t.Fatalf("CONNECT reply %q", reply)
	}
	return c
}

// readErr waits for the connection to end and returns the read error; it
// may run on another goroutine than the test's.
func readErr(t testing.TB, c *websocket.Conn, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		if _, _, err := c.Read(ctx); err != nil {
			if ctx.Err() != nil {
				t.Errorf("connection still open after %v", timeout)
			}
			return err
		}
	}
}

func TestHandshake(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) {
		o.PingInterval, o.PingTimeout, o.MaxPayload = 1500*time.Millisecond, 1200*time.Millisecond, 4096
	})
	w := wire{t, ts}
	check := func(h map[string]any, upgrades string) {
		t.Helper()
		if sid, _ := h["sid"].(string); len(sid) < 16 {
			t.Errorf("sid %q is too short to be unguessable", sid)
		}
		for k, want := range map[string]any{"pingInterval": 1500.0, "pingTimeout": 1200.0, "maxPayload": 4096.0} {
			if h[k] != want {
				t.Errorf("%s = %v, want %v", k, h[k], want)
			}
		}
		if got, _ := json.Marshal(h["upgrades"]); string(got) != upgrades {
			t.Errorf("upgrades = %s, want %s", got, upgrades)
		}
	}
	_, h := w.openPolling()
	check(h, `["websocket"]`)

	c := w.dial("")
	open := read(t, c)
	if err := json.Unmarshal([]byte(strings.TrimPrefix(open, "0")), &h); err != nil || open[0] != '0' {
		t.Fatalf("websocket open packet %q: %v", open, err)
	}
	check(h, `[]`)
}

func TestConnectAndEventOverPolling(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	sid := w.connectPolling(validToken("u1"))
	ev := assetEvent("u1", 7)
	if err := ts.Send(context.Background(), "u1", pipeline.EventAssetProcessed, ev); err != nil {
		t.Fatal(err)
	}
	want := `42["asset_processed",{"eventId":"evt-u1-7","assetId":"01JDQ7Y8W2P3K4M5N6Q7R8S9TA","jobId":"01JDQ7Y8W2P3K4M5N6Q7R8S9TB","userId":"u1","status":"completed","aiMetadata":{"provider":"builtin","n":7},"error":null,"attempts":1,"processedAt":"2026-11-29T01:02:03.450Z"}]`
	if status, body := w.get(sid); status != http.StatusOK || body != want {
		t.Errorf("GET = %d %q\nwant %q", status, body, want)
	}
	// Two packets in one POST, separated by \x1e; an event asking for an
	// ack is answered.
	if status, body := w.post(sid, "3\x1e421[\"hello\"]"); status != http.StatusOK || body != "ok" {
		t.Fatalf("POST = %d %q", status, body)
	}
	if _, body := w.get(sid); body != `431[{"error":{"code":"unknown_event","message":"the server handles no event \"hello\""}}]` {
		t.Errorf("ack = %q", body)
	}
}

func TestConnectErrors(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) { o.MaxConnsPerUser = 1 })
	w := wire{t, ts}
	w.connectPolling(validToken("full"))
	for _, tc := range []struct{ name, connect, want string }{
		{"no token", `40`, `44{"message":"unauthorized"}`},
		{"empty auth", `40{}`, `44{"message":"unauthorized"}`},
		{"bad token", `40{"token":"nope"}`, `44{"message":"unauthorized"}`},
		{"expired", `40{"token":"` + token("u1", time.Now().Add(-time.Minute)) + `"}`, `44{"message":"unauthorized"}`},
		{"other namespace", `40/admin,{"token":"` + validToken("u1") + `"}`, `44/admin,{"message":"Invalid namespace"}`},
		{"over the limit", `40{"token":"` + validToken("full") + `"}`, `44{"message":"too many connections","data":{"code":"too_many_connections","limit":1}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := wire{t, ts}
			sid, _ := w.openPolling()
			w.post(sid, tc.connect)
			if _, body := w.get(sid); body != tc.want {
				t.Errorf("reply %q, want %q", body, tc.want)
			}
		})
	}
	// A native client's Authorization header (sent with every request)
	// stands in for auth.token.
	hdr := http.Header{"Authorization": {"Bearer " + validToken("u2")}}
	status, body := w.do(http.MethodGet, w.endpoint("polling", ""), "", hdr)
	if status != http.StatusOK {
		t.Fatalf("handshake with header: %d %q", status, body)
	}
	var h map[string]any
	_ = json.Unmarshal([]byte(body[1:]), &h)
	sid := h["sid"].(string)
	w.do(http.MethodPost, w.endpoint("polling", sid), "40", hdr)
	if _, body := w.do(http.MethodGet, w.endpoint("polling", sid), "", hdr); !strings.HasPrefix(body, `40{"sid":`) {
		t.Errorf("CONNECT with the header token: %q", body)
	}
}

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) {
		o.PingInterval, o.PingTimeout = 50*time.Millisecond, time.Second
	})
	w := wire{t, ts}
	c := w.connectWS(validToken("u1"))
	for range 3 { // answered pings keep the connection
		if got := read(t, c); got != "2" {
			t.Fatalf("got %q, want ping", got)
		}
		write(t, c, "3")
	}
	if got := read(t, c); got != "2" {
		t.Fatalf("got %q, want ping", got)
	}
	start := time.Now()
	readErr(t, c, 10*time.Second) // not answered: closed
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Errorf("closed %v after the ping, before the ping timeout", waited)
	}
	if n := ts.ConnectedSockets(); n != 0 {
		t.Errorf("%d sockets still registered after the ping timeout", n)
	}
}

func TestUpgrade(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	sid := w.connectPolling(validToken("u1"))
	pending := make(chan string, 1)
	go func() { _, body := w.get(sid); pending <- body }()

	c := w.dial(sid)
	write(t, c, "2probe")
	if got := read(t, c); got != "3probe" {
		t.Fatalf("probe answer %q", got)
	}
	if got := <-pending; got != "6" { // the paused poll ends with a noop
		t.Errorf("pending poll answered %q, want noop", got)
	}
	write(t, c, "5")
	if err := ts.Send(context.Background(), "u1", "e", 1); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c); got != `42["e",1]` {
		t.Errorf("after the upgrade the event came as %q", got)
	}
	if status, _ := w.get(sid); status != http.StatusBadRequest {
		t.Errorf("a poll after the upgrade = %d, want 400", status)
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	for _, tc := range []struct{ query, want string }{
		{"EIO=3&transport=polling", `{"code":5,"message":"Unsupported protocol version"}`},
		{"EIO=4&transport=flashsocket", `{"code":0,"message":"Transport unknown"}`},
		{"EIO=4&transport=polling&sid=nope", `{"code":1,"message":"Session ID unknown"}`},
	} {
		status, body := w.do(http.MethodGet, ts.url+"/socket.io/?"+tc.query, "", nil)
		if status != http.StatusBadRequest || strings.TrimSpace(body) != tc.want {
			t.Errorf("%s: %d %q, want 400 %s", tc.query, status, body, tc.want)
		}
	}
}

func TestMaxPayload(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) { o.MaxPayload = 1024 })
	w := wire{t, ts}
	sid := w.connectPolling(validToken("u1"))
	if status, _ := w.post(sid, `42["x","`+strings.Repeat("a", 2000)+`"]`); status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized POST = %d, want 413", status)
	}
	if status, _ := w.get(sid); status != http.StatusBadRequest {
		t.Errorf("session after an oversized POST: %d, want it gone (400)", status)
	}
	c := w.connectWS(validToken("u1"))
	write(t, c, `42["x","`+strings.Repeat("a", 2000)+`"]`)
	if err := readErr(t, c, 10*time.Second); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Errorf("oversized websocket message: %v, want close 1009", err)
	}
}

func TestProtocolErrorsClose(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	for name, frame := range map[string]string{
		"binary event":   `451-["x",{"_placeholder":true,"num":0}]`,
		"unknown type":   `9`,
		"bad event json": `42["x"`,
	} {
		c := w.connectWS(validToken("u1"))
		write(t, c, frame)
		readErr(t, c, 10*time.Second)
		_ = name
	}
	c := w.connectWS(validToken("u1"))
	if err := c.Write(context.Background(), websocket.MessageBinary, []byte{4, 1}); err != nil {
		t.Fatal(err)
	}
	readErr(t, c, 10*time.Second)
}

func TestSlowConsumerIsDisconnected(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) { o.SendQueue = 4 })
	w := wire{t, ts}
	sid := w.connectPolling(validToken("u1")) // and then never polls again
	for i := range 5 {
		if err := ts.Send(context.Background(), "u1", "e", i); err != nil {
			t.Fatal(err)
		}
	}
	if n := ts.ConnectedSockets(); n != 0 {
		t.Errorf("%d sockets registered; the one with a full queue must be gone", n)
	}
	if status, _ := w.get(sid); status != http.StatusBadRequest {
		t.Errorf("poll of the disconnected session = %d, want 400", status)
	}
}

func TestNoEventAfterExpiry(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	exp := time.Now().Add(time.Hour)
	var now atomic.Pointer[time.Time]
	realNow := time.Now()
	now.Store(&realNow)
	realtime.SetClock(ts.Server, func() time.Time { return *now.Load() })
	w := wire{t, ts}
	sid := w.connectPolling(token("u1", exp))

	late := exp.Add(time.Millisecond)
	now.Store(&late) // the token has expired, its timer has not fired yet
	if err := ts.Send(context.Background(), "u1", "e", "after expiry"); err != nil {
		t.Fatal(err)
	}
	now.Store(&realNow)
	if err := ts.Send(context.Background(), "u1", "e", "before expiry"); err != nil {
		t.Fatal(err)
	}
	if _, body := w.get(sid); body != `42["e","before expiry"]` {
		t.Errorf("poll = %q; the event sent after expiry must be dropped", body)
	}
}

func TestExpiryDisconnectsOverWebSocket(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	exp := time.UnixMilli(time.Now().Add(time.Second).UnixMilli()) // what the token carries
	c := wire{t, ts}.connectWS(token("u1", exp))
	if got := read(t, c); got != "41" {
		t.Errorf("at expiry got %q, want DISCONNECT 41", got)
	}
	if time.Now().Before(exp) {
		t.Error("disconnected before the token expired")
	}
	if err := readErr(t, c, 10*time.Second); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("close after DISCONNECT: %v", err)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	c := w.connectWS(validToken("u1"))
	sid := w.connectPolling(validToken("u1"))
	pending := make(chan string, 1)
	go func() { _, body := w.get(sid); pending <- body }()
	// The poll is parked (close packet) or not yet (session gone); the
	// client reconnects after either.
	wsErr := make(chan error, 1)
	go func() { wsErr <- readErr(t, c, 10*time.Second) }() // answers the close frame
	ts.Stop()
	ts.Stop() // idempotent
	if err := <-wsErr; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("websocket after Stop: %v, want close 1001 (so clients reconnect)", err)
	}
	if got := <-pending; got != "1" && !strings.Contains(got, "Session ID unknown") {
		t.Errorf("pending poll after Stop = %q, want a close packet", got)
	}
	if status, _ := w.get(""); status != http.StatusServiceUnavailable {
		t.Errorf("handshake after Stop = %d, want 503", status)
	}
	if err := ts.Start(context.Background()); !errors.Is(err, realtime.ErrStopped) {
		t.Errorf("Start after Stop = %v, want ErrStopped", err)
	}
	if n := ts.ConnectedSockets(); n != 0 {
		t.Errorf("%d sockets registered after Stop", n)
	}
}

func TestNotServingBeforeStart(t *testing.T) {
	t.Parallel()
	rt, err := realtime.New(realtime.Options{Authenticate: fakeAuth, Bus: realtime.NewLocalBus()})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()
	req, _ := http.NewRequest(http.MethodGet, "/socket.io/?EIO=4&transport=polling", nil)
	rec := newRecorder()
	rt.ServeHTTP(rec, req)
	if rec.status != http.StatusServiceUnavailable {
		t.Errorf("handshake before Start = %d, want 503", rec.status)
	}
}

func TestCORS(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) { o.AllowedOrigins = []string{"https://app.example.com"} })
	w := wire{t, ts}
	url := w.endpoint("polling", "")
	if status, _ := w.do(http.MethodGet, url, "", http.Header{"Origin": {"https://evil.example.com"}}); status != http.StatusForbidden {
		t.Errorf("foreign origin = %d, want 403", status)
	}
	req, _ := http.NewRequest(http.MethodOptions, url, nil)
	req.Header.Set("Origin", "https://app.example.com")
	req.Header.Set("Access-Control-Request-Headers", "authorization")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		resp.Header.Get("Access-Control-Allow-Headers") != "authorization" {
		t.Errorf("preflight = %d %v", resp.StatusCode, resp.Header)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws := "ws" + strings.TrimPrefix(w.endpoint("websocket", ""), "http")
	if _, resp, err := websocket.Dial(ctx, ws, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example.com"}}}); err == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("websocket from a foreign origin: %v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts realtime.Options
		want string
	}{
		{realtime.Options{Bus: realtime.NewLocalBus()}, "Authenticate"},
		{realtime.Options{Authenticate: fakeAuth}, "Bus"},
		{realtime.Options{Authenticate: fakeAuth, Bus: realtime.NewLocalBus(), AllowedOrigins: []string{"app.example.com"}}, "AllowedOrigins"},
	} {
		if _, err := realtime.New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.opts, err, tc.want)
		}
	}
}

func TestSendRefuses(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	ctx := context.Background()
	if err := ts.Send(ctx, "u1", "connect", nil); !errors.Is(err, realtime.ErrInvalidMessage) {
		t.Errorf("reserved event name: %v", err)
	}
	if err := ts.Send(ctx, "", "e", nil); !errors.Is(err, realtime.ErrInvalidMessage) {
		t.Errorf("empty user: %v", err)
	}
	if err := ts.Send(ctx, "u1", "e", func() {}); err == nil {
		t.Error("unencodable data accepted")
	}
}

// recorder is a minimal ResponseWriter for handlers that answer at once.
type recorder struct {
	h      http.Header
	status int
}

func newRecorder() *recorder                    { return &recorder{h: http.Header{}} }
func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) WriteHeader(s int)           { r.status = s }

// TestRepliesAreBounded: a client that asks for replies (acks, connect
// errors) and never reads them is cut off at SendQueue, like a slow reader.
func TestRepliesAreBounded(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) { o.SendQueue = 4 })
	w := wire{t, ts}
	sid := w.connectPolling(validToken("u1"))
	var spam []string
	for i := range 10 {
		spam = append(spam, fmt.Sprintf(`42%d["x"]`, i))
	}
	w.post(sid, strings.Join(spam, "\x1e"))
	if status, _ := w.get(sid); status != http.StatusBadRequest {
		t.Errorf("session that never read its replies: poll = %d, want it gone (400)", status)
	}
	if n := ts.ConnectedSockets(); n != 0 {
		t.Errorf("%d sockets registered", n)
	}
}
