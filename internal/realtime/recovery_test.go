package realtime_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/sqlitelog"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// recoveryServer is a test server with connection state recovery on, fed
// as the app feeds it: the pipeline's events go through an
// eventlog.Notifier (append to the SQLite log, then publish).
type recoveryServer struct {
	*testServer
	log    eventlog.Log
	notify *eventlog.Notifier
}

func newSQLiteLog(t testing.TB) *sqlitelog.Log {
	t.Helper()
	db, err := sqlitedb.Open(context.Background(), filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := sqlitelog.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func withBacklog(b realtime.Backlog) serverOption {
	return func(o *realtime.Options) {
		o.Backlog, o.BacklogEvent = b, pipeline.EventAssetProcessed
	}
}

func startRecoveryServer(t testing.TB, addr string, bus *realtime.LocalBus, l eventlog.Log, opts ...serverOption) *recoveryServer {
	t.Helper()
	if l == nil {
		l = newSQLiteLog(t)
	}
	ts := startServer(t, addr, bus, append([]serverOption{withBacklog(l)}, opts...)...)
	return &recoveryServer{testServer: ts, log: l, notify: &eventlog.Notifier{Log: l, Next: ts.Server, Event: pipeline.EventAssetProcessed}}
}

// emit sends user's asset_processed number n as the pipeline does.
func (rs *recoveryServer) emit(t testing.TB, user string, n int) string {
	t.Helper()
	ev := assetEvent(user, n)
	if err := rs.notify.Send(context.Background(), user, pipeline.EventAssetProcessed, ev); err != nil {
		t.Fatalf("Send: %v", err)
	}
	return ev.EventID
}

// connectAuth opens a websocket session, sends CONNECT with auth and
// returns the connection and the reply's sid and pid.
func (w wire) connectAuth(auth map[string]any) (c *websocket.Conn, sid, pid string) {
	w.t.Helper()
	c = w.dial("")
	if open := read(w.t, c); !strings.HasPrefix(open, "0{") {
		w.t.Fatalf("open packet %q", open)
	}
	b, _ := json.Marshal(auth)
	write(w.t, c, "40"+string(b))
	reply := read(w.t, c)
	var r struct{ SID, PID string }
	if !strings.HasPrefix(reply, "40{") || json.Unmarshal([]byte(reply[2:]), &r) != nil || r.SID == "" {
		w.t.Fatalf("CONNECT reply %q", reply)
	}
	return c, r.SID, r.PID
}

// wantEvents reads the next events of c and checks they are user's
// asset_processed with these ids, in this order, each with its id as the
// offset.
func wantEvents(t *testing.T, c *websocket.Conn, user string, ids ...string) {
	t.Helper()
	for i, id := range ids {
		got := nextEvent(t, c)
		var args []json.RawMessage
		if !strings.HasPrefix(got, "42[") || json.Unmarshal([]byte(got[2:]), &args) != nil || len(args) != 3 {
			t.Fatalf("event %d of %v: %q is not [name, data, offset]", i, ids, got)
		}
		var data struct{ EventID, UserID string }
		_ = json.Unmarshal(args[1], &data)
		if string(args[0]) != `"asset_processed"` || data.UserID != user || data.EventID != id || string(args[2]) != `"`+id+`"` {
			t.Fatalf("event %d: got %q, want %s of %s with offset %q", i, got, id, user, id)
		}
	}
}

func ids(user string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("evt-%s-%d", user, i))
	}
	return out
}

func TestRecoveryWireFormat(t *testing.T) {
	t.Parallel()
	rs := startRecoveryServer(t, "", nil, nil)
	w := wire{t, rs.testServer}
	c, _, pid := w.connectAuth(map[string]any{"token": validToken("u1")})
	if pid == "" {
		t.Fatal("the CONNECT reply has no pid")
	}
	rs.emit(t, "u1", 0)
	want := `42["asset_processed",{"eventId":"evt-u1-0","assetId":"01JDQ7Y8W2P3K4M5N6Q7R8S9TA","jobId":"01JDQ7Y8W2P3K4M5N6Q7R8S9TB","userId":"u1","status":"completed","aiMetadata":{"provider":"builtin","n":0},"error":null,"attempts":1,"processedAt":"2026-11-29T01:02:03.450Z"},"evt-u1-0"]`
	if got := nextEvent(t, c); got != want {
		t.Errorf("event\n got %s\nwant %s", got, want)
	}
	// Other events carry no offset.
	if err := rs.Send(context.Background(), "u1", "other", map[string]int{"eventId": 1}); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, c); got != `42["other",{"eventId":1}]` {
		t.Errorf("other event: %s", got)
	}

	// Without a Backlog: no pid, no offset (today's wire).
	plain := startServer(t, "", nil)
	pw := wire{t, plain}
	c, _, pid = pw.connectAuth(map[string]any{"token": validToken("u1")})
	if pid != "" {
		t.Errorf("pid %q without a Backlog", pid)
	}
	if err := plain.Send(context.Background(), "u1", pipeline.EventAssetProcessed, assetEvent("u1", 0)); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, c); !strings.HasSuffix(got, `"processedAt":"2026-11-29T01:02:03.450Z"}]`) {
		t.Errorf("event without a Backlog: %s", got)
	}
}

// The official clients' reconnection: CONNECT {token, pid, offset}.
func TestRecoveryReplaysMissedEvents(t *testing.T) {
	t.Parallel()
	rs := startRecoveryServer(t, "", nil, nil)
	w := wire{t, rs.testServer}
	c, _, pid := w.connectAuth(map[string]any{"token": validToken("u1")})
	rs.emit(t, "u1", 0)
	wantEvents(t, c, "u1", "evt-u1-0")
	c.Close(websocket.StatusGoingAway, "")
	waitSockets(t, rs.testServer, 0)
	for i := 1; i <= 20; i++ {
		rs.emit(t, "u1", i)
		rs.emit(t, "u2", i) // never replayed to u1
	}
	c, _, got := w.connectAuth(map[string]any{"token": validToken("u1"), "pid": pid, "offset": "evt-u1-0"})
	if got != pid {
		t.Errorf("pid %q after recovery, want the client's %q (recovered)", got, pid)
	}
	wantEvents(t, c, "u1", ids("u1", 1, 21)...)
	// Nothing else was queued: the next thing is a new live event.
	rs.emit(t, "u1", 21)
	wantEvents(t, c, "u1", "evt-u1-21")
}

// A client that received no event before it lost the connection sends its
// pid without an offset: the replay starts where its first connection did.
func TestRecoveryWithoutOffset(t *testing.T) {
	t.Parallel()
	rs := startRecoveryServer(t, "", nil, nil)
	for i := range 3 { // before the socket: not replayed
		rs.emit(t, "u1", i)
	}
	w := wire{t, rs.testServer}
	c, _, pid := w.connectAuth(map[string]any{"token": validToken("u1")})
	c.Close(websocket.StatusGoingAway, "")
	waitSockets(t, rs.testServer, 0)
	for i := 3; i < 8; i++ {
		rs.emit(t, "u1", i)
	}
	c, _, got := w.connectAuth(map[string]any{"token": validToken("u1"), "pid": pid})
	if got != pid {
		t.Errorf("pid %q, want %q", got, pid)
	}
	wantEvents(t, c, "u1", ids("u1", 3, 8)...)
	c.Close(websocket.StatusGoingAway, "")
	waitSockets(t, rs.testServer, 0)

	// The same on a user's empty log: everything after the first connect.
	c, _, pid = w.connectAuth(map[string]any{"token": validToken("u3")})
	c.Close(websocket.StatusGoingAway, "")
	waitSockets(t, rs.testServer, 0)
	rs.emit(t, "u3", 0)
	c, _, got = w.connectAuth(map[string]any{"token": validToken("u3"), "pid": pid})
	if got != pid {
		t.Errorf("u3: pid %q, want %q", got, pid)
	}
	wantEvents(t, c, "u3", "evt-u3-0")
}

// An app relaunched: no pid, auth.lastEventId.
func TestRecoveryLastEventID(t *testing.T) {
	t.Parallel()
	rs := startRecoveryServer(t, "", nil, nil)
	for i := range 6 {
		rs.emit(t, "u1", i)
	}
	w := wire{t, rs.testServer}
	c, _, pid := w.connectAuth(map[string]any{"token": validToken("u1"), "lastEventId": "evt-u1-2"})
	if pid == "" {
		t.Error("no pid")
	}
	wantEvents(t, c, "u1", ids("u1", 3, 6)...)
	// That socket, cut before any event, resumes from the same point.
	c.Close(websocket.StatusGoingAway, "")
	waitSockets(t, rs.testServer, 0)
	c, _, got := w.connectAuth(map[string]any{"token": validToken("u1"), "pid": pid})
	if got != pid {
		t.Errorf("pid %q, want %q", got, pid)
	}
	wantEvents(t, c, "u1", ids("u1", 3, 6)...)
}

// An offset the log does not hold for this user (expired, invented, or
// another user's) replays nothing and the client is told it did not
// recover: a new pid.
func TestRecoveryUnknownOffset(t *testing.T) {
	t.Parallel()
	rs := startRecoveryServer(t, "", nil, nil)
	w := wire{t, rs.testServer}
	c, _, pid := w.connectAuth(map[string]any{"token": validToken("u1")})
	c.Close(websocket.StatusGoingAway, "")
	for i := range 3 {
		rs.emit(t, "u1", i)
		rs.emit(t, "u2", i)
	}
	if n, err := rs.log.Expire(context.Background(), time.Now().Add(time.Hour)); err != nil || n != 6 {
		t.Fatalf("Expire = %d, %v", n, err)
	}
	rs.emit(t, "u1", 3)
	rs.emit(t, "u2", 3)
	waitSockets(t, rs.testServer, 0)
	for name, auth := range map[string]map[string]any{
		"expired":       {"pid": pid, "offset": "evt-u1-1"},
		"invented":      {"pid": pid, "offset": "nope"},
		"other user's":  {"pid": pid, "offset": "evt-u2-3"},
		"lastEventId":   {"lastEventId": "evt-u1-0"},
		"u2's lastId":   {"lastEventId": "evt-u2-3"},
		"malformed pid": {"pid": "x.evt-u1-0"},
		"pid not text":  {"pid": 7, "offset": []int{1}},
		"huge offset":   {"pid": pid, "offset": strings.Repeat("e", 200)},
	} {
		auth["token"] = validToken("u1")
		c, _, got := w.connectAuth(auth)
		if got == pid || got == "" {
			t.Errorf("%s: pid %q, want a new one (not recovered)", name, got)
		}
		// The first event is the next live one.
		rs.emit(t, "u1", 100)
		wantEvents(t, c, "u1", "evt-u1-100")
		c.Close(websocket.StatusNormalClosure, "")
		waitSockets(t, rs.testServer, 0)
	}
}

// gatedBacklog holds the first After until released, so that live events
// arrive while a replay reads.
type gatedBacklog struct {
	realtime.Backlog
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (g *gatedBacklog) After(ctx context.Context, user, after string, limit int) ([]eventlog.Event, error) {
	g.once.Do(func() {
		close(g.entered)
		select {
		case <-g.release:
		case <-time.After(10 * time.Second):
		}
	})
	return g.Backlog.After(ctx, user, after, limit)
}

// Live events that arrive during a replay come after it, once: an event
// both replayed and published live is not sent twice.
func TestRecoveryLiveDuringReplay(t *testing.T) {
	t.Parallel()
	l := newSQLiteLog(t)
	g := &gatedBacklog{Backlog: l, entered: make(chan struct{}), release: make(chan struct{})}
	rs := startRecoveryServer(t, "", nil, l, withBacklog(g))
	w := wire{t, rs.testServer}
	c, _, pid := w.connectAuth(map[string]any{"token": validToken("u1")})
	rs.emit(t, "u1", 0)
	wantEvents(t, c, "u1", "evt-u1-0")
	c.Close(websocket.StatusGoingAway, "")
	waitSockets(t, rs.testServer, 0)
	for i := 1; i <= 3; i++ {
		rs.emit(t, "u1", i)
	}

	c = w.dial("")
	read(t, c) // open
	b, _ := json.Marshal(map[string]any{"token": validToken("u1"), "pid": pid, "offset": "evt-u1-0"})
	write(t, c, "40"+string(b))
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the replay never read the backlog")
	}
	// While the replay waits (LocalBus delivers before Send returns): one
	// event through the log (it will be in the replay and live), one
	// published without the log.
	rs.emit(t, "u1", 4)
	if err := rs.Send(context.Background(), "u1", pipeline.EventAssetProcessed, assetEvent("u1", 5)); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	reply := read(t, c)
	if !strings.Contains(reply, `"pid":"`+pid+`"`) {
		t.Fatalf("reply %q does not recover pid %q", reply, pid)
	}
	wantEvents(t, c, "u1", ids("u1", 1, 6)...)
	rs.emit(t, "u1", 6)
	wantEvents(t, c, "u1", "evt-u1-6")
	// A late live copy of a replayed event (a relay's repeat) is dropped.
	if err := rs.Send(context.Background(), "u1", pipeline.EventAssetProcessed, assetEvent("u1", 4)); err != nil {
		t.Fatal(err)
	}
	rs.emit(t, "u1", 7)
	wantEvents(t, c, "u1", "evt-u1-7")
}

// A backlog longer than the send queue goes out page by page as the client
// reads, all of it, in order.
func TestRecoveryLongBacklog(t *testing.T) {
	t.Parallel()
	rs := startRecoveryServer(t, "", nil, nil, func(o *realtime.Options) { o.SendQueue = 8 })
	for i := range 3 {
		rs.emit(t, "u1", i)
	}
	w := wire{t, rs.testServer}
	for i := 3; i < 250; i++ {
		rs.emit(t, "u1", i)
	}
	c, _, _ := w.connectAuth(map[string]any{"token": validToken("u1"), "lastEventId": "evt-u1-2"})
	wantEvents(t, c, "u1", ids("u1", 3, 250)...)
	rs.emit(t, "u1", 250)
	wantEvents(t, c, "u1", "evt-u1-250")
}

// Over long-polling too, and the offset of a socket on polling.
func TestRecoveryOverPolling(t *testing.T) {
	t.Parallel()
	rs := startRecoveryServer(t, "", nil, nil)
	for i := range 4 {
		rs.emit(t, "u1", i)
	}
	w := wire{t, rs.testServer}
	sid, _ := w.openPolling()
	if status, body := w.post(sid, `40{"token":"`+validToken("u1")+`","lastEventId":"evt-u1-1"}`); status != http.StatusOK || body != "ok" {
		t.Fatalf("POST CONNECT: %d %q", status, body)
	}
	var got []string
	for deadline := time.Now().Add(10 * time.Second); len(got) < 3 && time.Now().Before(deadline); {
		_, body := w.get(sid)
		got = append(got, strings.Split(body, "\x1e")...)
	}
	if len(got) != 3 || !strings.HasPrefix(got[0], `40{"sid":"`) ||
		!strings.HasSuffix(got[1], `},"evt-u1-2"]`) || !strings.HasSuffix(got[2], `},"evt-u1-3"]`) {
		t.Errorf("polled %q", got)
	}
}

func TestRecoveryOptions(t *testing.T) {
	t.Parallel()
	for _, event := range []string{"", "connect"} {
		_, err := realtime.New(realtime.Options{Authenticate: fakeAuth, Bus: realtime.NewLocalBus(), Backlog: newSQLiteLog(t), BacklogEvent: event})
		if err == nil {
			t.Errorf("New accepted BacklogEvent %q", event)
		}
	}
}

// waitSockets waits until the server has n sockets connected.
func waitSockets(t testing.TB, ts *testServer, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ts.ConnectedSockets() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d sockets connected, want %d", ts.ConnectedSockets(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
