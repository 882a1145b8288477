package realtime_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/klectr/klectr/internal/realtime"
)

// clientFrom returns an HTTP client whose connections come from the
// loopback address ip (all of 127.0.0.0/8 is local on Linux, where CI
// runs; macOS has only 127.0.0.1 unless aliases are added), so that a test
// can be several clients.
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("this machine cannot use loopback address %s: %v", ip, err)
	}
	ln.Close()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// handshake does a polling handshake as c; it returns the status, the sid
// on success and the body otherwise.
func handshake(t *testing.T, c *http.Client, ts *testServer) (int, string, string) {
	t.Helper()
	res, err := c.Get(ts.url + "/socket.io/?EIO=4&transport=polling")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, "", string(b)
	}
	var h struct{ SID string }
	if err := json.Unmarshal(b[1:], &h); err != nil {
		t.Fatalf("open packet %q: %v", b, err)
	}
	return res.StatusCode, h.SID, ""
}

// TestUnauthenticatedSessionsAreCapped: at most MaxPendingPerIP sessions of
// one address and MaxPending in all may wait for their CONNECT; the next
// handshake, polling or websocket, is refused with 429 or 503, an
// Engine.IO error body and Retry-After. A CONNECT that authenticates, or the
// connect timeout, frees the slot.
func TestUnauthenticatedSessionsAreCapped(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) {
		o.MaxPending, o.MaxPendingPerIP, o.ConnectTimeout = 12, 5, time.Hour
	})
	a := clientFrom(t, "127.0.0.2")
	var sids []string
	for i := range 5 {
		status, sid, body := handshake(t, a, ts)
		if status != http.StatusOK {
			t.Fatalf("handshake %d: %d %s", i, status, body)
		}
		sids = append(sids, sid)
	}
	status, _, body := handshake(t, a, ts)
	if status != http.StatusTooManyRequests || !strings.Contains(body, `"code":3`) || !strings.Contains(body, "Too many unauthenticated connections") {
		t.Fatalf("6th handshake of one address: %d %s, want 429 with an Engine.IO error", status, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.url, "http")+"/socket.io/?EIO=4&transport=websocket",
		&websocket.DialOptions{HTTPClient: a})
	if err == nil || res == nil || res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" {
		t.Fatalf("websocket handshake over the limit: %v %v, want 429 with Retry-After", res, err)
	}

	// Another address has slots of its own, up to the process's limit.
	b := clientFrom(t, "127.0.0.3")
	for range 5 {
		if status, _, body := handshake(t, b, ts); status != http.StatusOK {
			t.Fatalf("another address: %d %s", status, body)
		}
	}
	c := clientFrom(t, "127.0.0.4")
	for range 2 {
		if status, _, body := handshake(t, c, ts); status != http.StatusOK {
			t.Fatalf("third address: %d %s", status, body)
		}
	}
	if status, _, body := handshake(t, clientFrom(t, "127.0.0.5"), ts); status != http.StatusServiceUnavailable || !strings.Contains(body, "Too many unauthenticated connections") {
		t.Fatalf("handshake over the process's limit: %d %s, want 503", status, body)
	}

	// An authenticated CONNECT frees the slot of its address.
	w := wire{t, ts}
	w.post(sids[0], `40{"token":"`+validToken("u1")+`"}`)
	if _, body := w.get(sids[0]); !strings.HasPrefix(body, `40{"sid"`) {
		t.Fatalf("CONNECT reply %q", body)
	}
	if status, _, body := handshake(t, a, ts); status != http.StatusOK {
		t.Fatalf("after a CONNECT the address has a slot again: %d %s", status, body)
	}
	// A refused CONNECT does not.
	w.post(sids[1], `40{"token":"nope"}`)
	w.get(sids[1])
	if status, _, _ := handshake(t, a, ts); status == http.StatusOK {
		t.Fatalf("after a refused CONNECT: %d, want a refusal", status)
	}
	// A client close does.
	w.post(sids[1], "1")
	waitFor(t, func() bool { s, _, _ := handshake(t, a, ts); return s == http.StatusOK })
}

// TestPendingSlotsFreeAtConnectTimeout: a session that never sends CONNECT
// is closed after ConnectTimeout and its slot is free again.
func TestPendingSlotsFreeAtConnectTimeout(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) {
		o.MaxPendingPerIP, o.ConnectTimeout = 3, 200*time.Millisecond
	})
	a := clientFrom(t, "127.0.0.6")
	for range 3 {
		handshake(t, a, ts)
	}
	if status, _, _ := handshake(t, a, ts); status != http.StatusTooManyRequests {
		t.Fatalf("4th handshake: %d, want 429", status)
	}
	waitFor(t, func() bool { s, _, _ := handshake(t, a, ts); return s == http.StatusOK })
}

// TestHandshakeFloodIsBounded is the reproduction of the issue with
// numbers: 2,000 polling handshakes from one address in a burst leave at
// most MaxPendingPerIP sessions, so the goroutines do not grow with them
// (before the cap, each session held a heartbeat goroutine until its
// connect timeout). Not parallel: it counts the process's goroutines.
func TestHandshakeFloodIsBounded(t *testing.T) {
	ts := startServer(t, "", nil, func(o *realtime.Options) { o.ConnectTimeout = time.Minute })
	a := clientFrom(t, "127.0.0.7")
	before := runtime.NumGoroutine()
	ok, refused := 0, 0
	for range 2000 {
		switch status, _, _ := handshake(t, a, ts); status {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("handshake: %d", status)
		}
	}
	grew := runtime.NumGoroutine() - before
	t.Logf("2000 handshakes: %d accepted, %d refused; goroutines grew by %d", ok, refused, grew)
	if ok != realtime.DefaultMaxPendingPerIP {
		t.Errorf("%d handshakes accepted, want DefaultMaxPendingPerIP = %d", ok, realtime.DefaultMaxPendingPerIP)
	}
	if grew > 4*realtime.DefaultMaxPendingPerIP {
		t.Errorf("goroutines grew by %d for %d pending sessions", grew, ok)
	}
}

// waitFor polls cond every 50 ms for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
