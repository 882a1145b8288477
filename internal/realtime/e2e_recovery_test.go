package realtime_test

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// wantLogged waits for socket name to receive user's asset_processed with
// eventID, carrying eventID as its offset (connection state recovery).
func (h *harness) wantLogged(name, user, eventID string) {
	h.t.Helper()
	m := h.want(name, "event", map[string]any{"event": "asset_processed"})
	args, _ := m["args"].([]any)
	if len(args) != 2 {
		h.t.Fatalf("socket %s: event %v has %d arguments, want the data and the offset", name, m, len(args))
	}
	if err := eventSchema(h.t).Validate(args[0]); err != nil {
		h.t.Errorf("socket %s received an event that breaks the schema: %v", name, err)
	}
	got, _ := args[0].(map[string]any)
	if got["userId"] != user || got["eventId"] != eventID || args[1] != eventID {
		h.t.Fatalf("socket %s (user %s) received %v, want eventId %s with that offset", name, user, args, eventID)
	}
}

func (h *harness) noMoreEvents(name string) {
	h.t.Helper()
	if extra := h.lines.unclaimed(match(name, "event", nil)); len(extra) > 0 {
		h.t.Errorf("socket %s: %d more events (duplicates or another user's), first %v", name, len(extra), extra[0])
	}
}

// TestE2ERecovery: the official client's connection state recovery. A
// socket cut (as by a network loss) while 20 of its user's events and 20 of
// another user's go out gets its 20 when it reconnects, in order, none
// twice, with socket.recovered true; a relaunched app resumes from
// auth.lastEventId; an expired position recovers nothing.
func TestE2ERecovery(t *testing.T) {
	t.Parallel()
	for name, tr := range map[string]map[string]any{"websocket": wsOnly, "default": nil, "polling": pollingOnly} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rs := startRecoveryServer(t, "", nil, nil)
			h := startHarness(t)
			// Away for 2 s before it reconnects (the 10 s, shortened).
			away := map[string]any{"reconnectionDelay": 2000, "reconnectionDelayMax": 2000, "randomizationFactor": 0}
			h.connect("a", rs.url, auth(validToken("u1"), merge(tr, away)))
			h.want("a", "connect", map[string]any{"recovered": false})
			h.wantLogged("a", "u1", rs.emit(t, "u1", 0))

			h.send(map[string]any{"op": "cut", "name": "a"})
			h.want("a", "disconnect", nil)
			waitSockets(t, rs.testServer, 0)
			cut := time.Now()
			for i := 1; i <= 20; i++ {
				rs.emit(t, "u1", i)
				rs.emit(t, "u2", i)
			}
			h.want("a", "reconnect", nil)
			h.want("a", "connect", map[string]any{"recovered": true})
			for i := 1; i <= 20; i++ {
				h.wantLogged("a", "u1", fmt.Sprintf("evt-u1-%d", i))
			}
			t.Logf("%s: 20 of 20 events replayed in order after a cut of %v", name, time.Since(cut).Round(time.Millisecond))
			h.wantLogged("a", "u1", rs.emit(t, "u1", 21))
			h.noMoreEvents("a")

			// The app was killed after event 5 and relaunched.
			h.connect("b", rs.url, auth(validToken("u1"), merge(tr, map[string]any{"auth": map[string]any{"token": validToken("u1"), "lastEventId": "evt-u1-5"}})))
			h.want("b", "connect", map[string]any{"recovered": false})
			for i := 6; i <= 21; i++ {
				h.wantLogged("b", "u1", fmt.Sprintf("evt-u1-%d", i))
			}
			h.noMoreEvents("b")

			// Everything it had expires while it is away: not recovered,
			// nothing replayed, the next live event is the first it sees.
			if _, err := rs.log.Expire(context.Background(), time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			h.send(map[string]any{"op": "cut", "name": "a"})
			h.want("a", "disconnect", nil)
			waitSockets(t, rs.testServer, 1) // b
			rs.emit(t, "u1", 22)
			h.wantLogged("b", "u1", "evt-u1-22")
			h.want("a", "connect", map[string]any{"recovered": false})
			h.wantLogged("a", "u1", rs.emit(t, "u1", 23))
			h.wantLogged("b", "u1", "evt-u1-23")
			h.noMoreEvents("a")
			h.noMoreEvents("b")

			// A socket cut before it received any event has no offset to
			// send, only its pid: it gets everything since it connected.
			rs.emit(t, "u3", 0) // before it connected: not replayed
			h.connect("c", rs.url, auth(validToken("u3"), merge(tr, away)))
			h.want("c", "connect", map[string]any{"recovered": false})
			h.send(map[string]any{"op": "cut", "name": "c"})
			h.want("c", "disconnect", nil)
			waitSockets(t, rs.testServer, 2)
			for i := 1; i <= 20; i++ {
				rs.emit(t, "u3", i)
			}
			h.want("c", "connect", map[string]any{"recovered": true})
			for i := 1; i <= 20; i++ {
				h.wantLogged("c", "u3", fmt.Sprintf("evt-u3-%d", i))
			}
			h.noMoreEvents("c")
		})
	}
}
