package realtime_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/klectr/klectr/internal/pipeline"
)

// nextEvent reads c until a packet other than a ping and returns it.
func nextEvent(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	for {
		if got := read(t, c); got != "2" {
			return got
		}
		write(t, c, "3")
	}
}

// TestEventsReachOnlyTheirUser: on the wire, u1's sockets (websocket and
// polling) receive u1's events and u2's sockets — on either transport, and
// one that was u1's socket before it left and connected again as u2 —
// receive none of them. Each u2 socket is shown to be live by a marker
// event sent to u2 after u1's: the first thing it receives is that marker,
// so nothing of u1's was queued before it.
func TestEventsReachOnlyTheirUser(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	u1ws := w.connectWS(validToken("u1"))
	u1poll := w.connectPolling(validToken("u1"))
	u2ws := w.connectWS(validToken("u2"))
	u2poll := w.connectPolling(validToken("u2"))
	// A socket of u1 that leaves and connects again, on the same Engine.IO
	// connection, as u2.
	switched := w.connectWS(validToken("u1"))
	write(t, switched, "41")
	write(t, switched, `40{"token":"`+validToken("u2")+`"}`)
	if reply := nextEvent(t, switched); !strings.HasPrefix(reply, `40{"sid":"`) {
		t.Fatalf("CONNECT as u2 after leaving as u1: %q", reply)
	}

	ctx := context.Background()
	var want []string
	for i := range 3 {
		ev := assetEvent("u1", i)
		if err := ts.Send(ctx, "u1", pipeline.EventAssetProcessed, ev); err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf(`"eventId":"evt-u1-%d"`, i))
	}
	for i, frag := range want {
		if got := nextEvent(t, u1ws); !strings.HasPrefix(got, `42["asset_processed",`) || !strings.Contains(got, frag) || !strings.Contains(got, `"userId":"u1"`) {
			t.Fatalf("u1's websocket, event %d: %q", i, got)
		}
	}
	got := []string{}
	for len(got) < len(want) {
		status, body := w.get(u1poll)
		if status != http.StatusOK {
			t.Fatalf("u1's poll: %d %q", status, body)
		}
		for _, p := range splitPackets(body) {
			if p != "2" {
				got = append(got, p)
			}
		}
		w.post(u1poll, "3")
	}
	for i, frag := range want {
		if !strings.Contains(got[i], frag) {
			t.Fatalf("u1's poll, event %d: %q", i, got[i])
		}
	}

	marker := assetEvent("u2", 99)
	if err := ts.Send(ctx, "u2", pipeline.EventAssetProcessed, marker); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*websocket.Conn{"u2's websocket": u2ws, "u1's socket, now u2's": switched} {
		if got := nextEvent(t, c); !strings.Contains(got, `"eventId":"evt-u2-99"`) || strings.Contains(got, "u1") {
			t.Errorf("%s first received %q, want u2's marker and nothing of u1's", name, got)
		}
	}
	status, body := w.get(u2poll)
	if status != http.StatusOK || strings.Contains(body, "u1") || !strings.Contains(body, `"eventId":"evt-u2-99"`) {
		t.Errorf("u2's poll: %d %q, want u2's marker and nothing of u1's", status, body)
	}
	// And the other way: u1's next packet is u1's next event, not u2's.
	if err := ts.Send(ctx, "u1", pipeline.EventAssetProcessed, assetEvent("u1", 100)); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, u1ws); !strings.Contains(got, `"eventId":"evt-u1-100"`) {
		t.Errorf("u1's websocket received %q, want u1's next event", got)
	}
	if _, body := w.get(u1poll); !strings.Contains(body, `"eventId":"evt-u1-100"`) || strings.Contains(body, "u2") {
		t.Errorf("u1's poll received %q, want u1's next event only", body)
	}
}
