package realtime_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/mongolog"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/testenv"
)

// logs are the event logs of the two deployment shapes; mongo skips
// without KLECTR_TEST_MONGODB_URI.
var logs = map[string]func(t testing.TB) eventlog.Log{
	"sqlite": func(t testing.TB) eventlog.Log { return newSQLiteLog(t) },
	"mongo": func(t testing.TB) eventlog.Log {
		uri, name := testenv.MongoURI(t)
		c, err := mongo.Connect(options.Client().ApplyURI(uri))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Disconnect(context.Background()) })
		l, err := mongolog.New(context.Background(), c.Database(name), eventlog.DefaultRetention)
		if err != nil {
			t.Fatal(err)
		}
		return l
	},
}

type discard struct{}

func (discard) Send(context.Context, string, string, any) error { return nil }

// A pid is not a session in memory: a socket of node A recovers on node B,
// which shares only the event log (each has its own bus and registry).
func TestRecoveryOnAnotherNode(t *testing.T) {
	t.Parallel()
	for name, newLog := range logs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			l := newLog(t)
			a := startRecoveryServer(t, "", nil, l)
			b := startRecoveryServer(t, "", nil, l)
			c, _, pid := wire{t, a.testServer}.connectAuth(map[string]any{"token": validToken("u1")})
			wantEvents(t, c, "u1", a.emit(t, "u1", 0))
			c.Close(websocket.StatusGoingAway, "")
			for i := 1; i <= 20; i++ { // a worker's events, published on A's bus
				a.emit(t, "u1", i)
				a.emit(t, "u2", i)
			}
			c, _, got := wire{t, b.testServer}.connectAuth(map[string]any{"token": validToken("u1"), "pid": pid, "offset": "evt-u1-0"})
			if got != pid {
				t.Errorf("pid %q on node B, want %q (recovered)", got, pid)
			}
			wantEvents(t, c, "u1", ids("u1", 1, 21)...)
			wantEvents(t, c, "u1", b.emit(t, "u1", 21))
		})
	}
}

// TestE2ERecoveryAcrossRestart: the official client, cut by a server
// restart (embedded, SQLite) or moved to a new node (MongoDB log, nothing
// else shared), recovers the 20 events published while no server was up.
func TestE2ERecoveryAcrossRestart(t *testing.T) {
	t.Parallel()
	for name, newLog := range logs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			l := newLog(t)
			beat := func(o *realtime.Options) { o.PingInterval, o.PingTimeout = time.Second, time.Second }
			first := startRecoveryServer(t, "", nil, l, beat)
			addr := first.addr()
			h := startHarness(t)
			fast := map[string]any{"reconnectionDelay": 100, "reconnectionDelayMax": 200, "randomizationFactor": 0}
			names := []string{"ws", "default", "polling"}
			for i, tr := range []map[string]any{wsOnly, nil, pollingOnly} {
				h.connect(names[i], first.url, auth(validToken("u1"), merge(tr, fast)))
				h.want(names[i], "connect", map[string]any{"recovered": false})
			}
			first.emit(t, "u1", 0)
			for _, n := range names {
				h.wantLogged(n, "u1", "evt-u1-0")
			}
			first.close()
			for _, n := range names {
				h.want(n, "disconnect", nil)
			}
			// The worker goes on while no API process is up.
			worker := &eventlog.Notifier{Log: l, Next: discard{}, Event: pipeline.EventAssetProcessed}
			for i := 1; i <= 20; i++ {
				for _, u := range []string{"u1", "u2"} {
					if err := worker.Send(context.Background(), u, pipeline.EventAssetProcessed, assetEvent(u, i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			second := startRecoveryServer(t, addr, nil, l, beat)
			for _, n := range names {
				h.want(n, "connect", map[string]any{"recovered": true})
				for i := 1; i <= 20; i++ {
					h.wantLogged(n, "u1", fmt.Sprintf("evt-u1-%d", i))
				}
			}
			second.emit(t, "u1", 21)
			for _, n := range names {
				h.wantLogged(n, "u1", "evt-u1-21")
				h.noMoreEvents(n)
			}
			t.Logf("%s: 20 of 20 events replayed to each of 3 sockets after the restart", name)
		})
	}
}
