package realtime_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/klectr/klectr/internal/realtime"
)

// TestBurstToOneSocket: a user's whole backlog sent in a tight loop (the
// pipeline's relay after a crash) reaches a socket that reads normally, on
// both transports, in order.
func TestBurstToOneSocket(t *testing.T) {
	t.Parallel()
	const n = 1000
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	c := w.connectWS(validToken("ws"))
	sid := w.connectPolling(validToken("polling"))
	for i := range n {
		for _, user := range []string{"ws", "polling"} {
			if err := ts.Send(context.Background(), user, "e", i); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got []string
	for len(got) < n {
		if m := read(t, c); m != "2" {
			got = append(got, m)
		}
	}
	var polled []string
	for len(polled) < n {
		status, body := w.get(sid)
		if status != http.StatusOK {
			t.Fatalf("poll after %d events: %d %q", len(polled), status, body)
		}
		for _, p := range splitPackets(body) {
			if p != "2" {
				polled = append(polled, p)
			}
		}
	}
	for i := range n {
		want := `42["e",` + strconv.Itoa(i) + `]`
		if got[i] != want || polled[i] != want {
			t.Fatalf("event %d: websocket %q, polling %q, want %q", i, got[i], polled[i], want)
		}
	}
}

// TestNonReadingClientIsCutOff: a websocket client that stops reading fills
// its TCP buffers, then the bounded queue; the server disconnects it instead
// of holding more.
func TestNonReadingClientIsCutOff(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil, func(o *realtime.Options) {
		o.SendQueue, o.WriteTimeout = 16, 500*time.Millisecond
	})
	c := wire{t, ts}.connectWS(validToken("u1"))
	big := make([]byte, 32<<10) // fills socket buffers in a few events
	for i := range big {
		big[i] = 'x'
	}
	deadline := time.Now().Add(30 * time.Second)
	for ts.ConnectedSockets() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a client that never reads is still connected")
		}
		if err := ts.Send(context.Background(), "u1", "e", string(big)); err != nil {
			t.Fatal(err)
		}
	}
	if err := readErr(t, c, 10*time.Second); websocket.CloseStatus(err) == websocket.StatusNormalClosure {
		t.Errorf("cut-off client saw a normal close: %v", err)
	}
}

func splitPackets(body string) []string { return strings.Split(body, "\x1e") }
