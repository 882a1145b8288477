package app

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/auth"
)

// testRecoveryAcrossRestart (issue 10, item 1) on the real binary with the
// official client: a socket cut while its assets finish, then the server
// restarted, reconnects by itself and gets every event it missed, in the
// log's order, once, with socket.recovered true; a relaunched app (a fresh
// socket with auth.lastEventId) gets the same events.
func testRecoveryAcrossRestart(t *testing.T, bin string) {
	const missed = 20
	sio := startSIO(t)
	if sio == nil {
		t.Skip("set KLECTR_E2E_DIR: connection state recovery is the official client's")
	}
	ai := newFakeAI(t, func(*http.Request, string, int, int) (int, string) { return http.StatusOK, `{"label":"card"}` })
	env := baseEnv(t, ai, t.TempDir())
	keys := auth.NewKeys([]byte(testSecret), nil)
	alice, _ := keys.Sign("alice", "", time.Hour)
	first := startKlectr(t, bin, env)
	lb := newBalancer(t, first.url)

	// The client retries every second after the cut; the balancer refuses
	// it until the assets have finished and the server has restarted.
	sio.send(map[string]any{"op": "connect", "name": "a", "url": lb.url, "opts": map[string]any{
		"auth": map[string]string{"token": alice}, "reconnection": true,
		"reconnectionDelay": 1000, "reconnectionDelayMax": 1000,
	}})
	if _, err := sio.lines.wait(30*time.Second, func(r map[string]any) bool { return r["name"] == "a" && r["ev"] == "connect" }); err != nil {
		t.Fatalf("no connect: %v\n%s", err, sio.lines.text())
	}
	image := fixture(t, "valid/video-001.q50.420.jpeg")
	if _, err := postImages(context.Background(), first.url, alice, image, 1); err != nil {
		t.Fatal(err)
	}
	sio.waitAssets(1, 30*time.Second)
	before := eventIDs(t, sio, "a")

	lb.blocked.Store(true)
	sio.send(map[string]any{"op": "cut", "name": "a"})
	cut, err := sio.lines.wait(10*time.Second, func(r map[string]any) bool { return r["name"] == "a" && r["ev"] == "disconnect" })
	if err != nil {
		t.Fatalf("the cut did not disconnect: %v", err)
	}
	owners := map[string]string{}
	for range missed / 10 {
		ids, err := postImages(context.Background(), first.url, alice, image, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			owners[id] = alice
		}
	}
	// Another user's assets finish in the same log: none may reach alice.
	bob, _ := keys.Sign("bob", "", time.Hour)
	bobIDs, err := postImages(context.Background(), first.url, bob, image, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range bobIDs {
		owners[id] = bob
	}
	waitAllFinal(t, first.url, owners, time.Minute)
	if code := first.stop(30 * time.Second); code != 0 {
		t.Fatalf("first exit %d:\n%s", code, first.logs.text())
	}
	first.checkClean()
	second := startKlectr(t, bin, env)
	if n := len(eventIDs(t, sio, "a")); n != len(before) {
		t.Fatalf("the socket got %d events while cut", n-len(before))
	}
	// The scenario: the socket stays cut for 10 s.
	time.Sleep(time.Until(time.UnixMilli(int64(cut["t"].(float64))).Add(10 * time.Second)))
	lb.open(t, second.url)

	rec, err := sio.lines.wait(30*time.Second, func(r map[string]any) bool {
		return r["name"] == "a" && r["ev"] == "connect" && r["t"].(float64) > cut["t"].(float64)
	})
	if err != nil {
		t.Fatalf("no reconnect: %v\n%s", err, sio.lines.text())
	}
	if rec["recovered"] != true {
		t.Fatalf("reconnect not recovered: %v", rec)
	}
	reconnected := time.UnixMilli(int64(rec["t"].(float64))).Sub(time.UnixMilli(int64(cut["t"].(float64))))
	sio.waitAssets(1+missed, 30*time.Second)

	var page struct {
		Events []struct{ EventID, UserID string }
	}
	if status, err := getJSON(second.url, "/api/events?limit=100&after="+before[0], alice, &page); err != nil || status != 200 {
		t.Fatalf("GET /api/events: %d %v", status, err)
	}
	var logged []string
	for _, e := range page.Events {
		logged = append(logged, e.EventID)
	}
	time.Sleep(500 * time.Millisecond) // a repeat would follow the replay closely
	got := eventIDs(t, sio, "a")
	if len(logged) != missed || !slices.Equal(got[1:], logged) {
		t.Fatalf("events after the cut:\n got %v\nwant %v (the log's order, once each)", got[1:], logged)
	}

	// A relaunched app: no session, its last event id.
	sio.send(map[string]any{"op": "connect", "name": "relaunch", "url": second.url, "opts": map[string]any{
		"auth": map[string]string{"token": alice, "lastEventId": before[0]}, "reconnection": false,
	}})
	rec, err = sio.lines.wait(30*time.Second, func(r map[string]any) bool { return r["name"] == "relaunch" && r["ev"] == "connect" })
	if err != nil || rec["recovered"] != false {
		t.Fatalf("relaunch connect: %v %v", rec, err)
	}
	waitFor(t, 30*time.Second, "the relaunched socket's replay", func() bool { return len(eventIDs(t, sio, "relaunch")) >= missed })
	relaunched := eventIDs(t, sio, "relaunch")
	if !slices.Equal(relaunched, logged) {
		t.Fatalf("relaunch replay:\n got %v\nwant %v", relaunched, logged)
	}
	t.Logf("%d events missed during a cut of %v across a restart: all replayed in order, recovered; relaunch with lastEventId: %d replayed",
		missed, reconnected.Round(time.Millisecond), len(relaunched))
	if code := second.stop(30 * time.Second); code != 0 {
		t.Fatalf("second exit %d", code)
	}
	second.checkClean()
}

// balancer is a load balancer in front of klectr api processes: every new
// request goes to target; while blocked, requests get 503, as from a
// balancer with no healthy backend (Socket.IO clients retry).
type balancer struct {
	url     string
	target  atomic.Pointer[url.URL]
	blocked atomic.Bool
}

func newBalancer(t *testing.T, target string) *balancer {
	t.Helper()
	b := &balancer{}
	b.setTarget(t, target)
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(b.target.Load()) }}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b.blocked.Load() {
			http.Error(w, "no backend", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	return b
}

func (b *balancer) setTarget(t *testing.T, target string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	b.target.Store(u)
}

// open sends the requests from now on to target.
func (b *balancer) open(t *testing.T, target string) {
	b.setTarget(t, target)
	b.blocked.Store(false)
}

// eventIDs are the eventIds of the asset_processed events socket received,
// in order.
func eventIDs(t *testing.T, sio *sioClient, socket string) []string {
	var out []string
	for _, e := range sio.events() {
		if e.Socket != socket {
			continue
		}
		var ev struct{ EventID, UserID string }
		if err := json.Unmarshal(e.Data, &ev); err != nil || ev.UserID != "alice" {
			t.Errorf("event %s on %s: %v", e.Data, socket, err)
		}
		out = append(out, ev.EventID)
	}
	return out
}

// EVENT_RETENTION: the worker's sweep deletes the events older than it, so
// they are neither served over HTTP nor replayed (the first sweep runs
// reconnectGrace after start).
func TestServeExpiresEvents(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"EVENT_RETENTION": "1s"})
	ids := s.uploadOK(s.alice, "valid/video-001.png")
	s.waitFinal(s.alice, ids[0])
	// The event is appended a moment after the asset is final, and the
	// first sweep runs reconnectGrace (3 s) after the start.
	var page struct{ Events []json.RawMessage }
	waitFor(t, 10*time.Second, "the event in the log", func() bool {
		status, err := getJSON(s.url, "/api/events", s.alice, &page)
		return err == nil && status == 200 && len(page.Events) == 1
	})
	waitFor(t, 30*time.Second, "the event to expire", func() bool {
		status, err := getJSON(s.url, "/api/events", s.alice, &page)
		return err == nil && status == 200 && len(page.Events) == 0
	})
	// The line follows the delete's commit.
	waitFor(t, 10*time.Second, "the expiry logged", func() bool { return strings.Contains(s.logs.String(), "expired events deleted") })
}
