package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/klectr/klectr/internal/auth"
)

const fakeSecret = "0123456789abcdef0123456789abcdef"

// fakeKlectr is a stand-in for klectr's two public surfaces the bench uses:
// the upload endpoint and the Socket.IO websocket, written from the frames
// of the protocol. Each accepted asset's event goes to its owner's socket,
// except where a test asks it to misbehave.
type fakeKlectr struct {
	srv  *httptest.Server
	keys *auth.Keys

	pingInterval time.Duration
	pingTimeout  time.Duration
	drop         int64 // the n-th upload's event (1-based) is never sent; 0: none
	leak         int64 // the n-th upload's event goes to another user's socket; 0: none
	kick         int64 // at the n-th upload, the owner's socket gets DISCONNECT instead of the event; 0: none

	uploads atomic.Int64
	pongs   atomic.Int64
	noPong  atomic.Int64 // sockets closed for a missing pong

	mu    sync.Mutex
	conns map[string]*websocket.Conn // user → socket
}

func newFake(t *testing.T, configure func(*fakeKlectr)) *fakeKlectr {
	t.Helper()
	f := &fakeKlectr{keys: auth.NewKeys([]byte(fakeSecret), nil), pingInterval: 50 * time.Millisecond, pingTimeout: time.Second, conns: map[string]*websocket.Conn{}}
	if configure != nil {
		configure(f)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/assets/analyze-queue", f.upload)
	mux.HandleFunc("GET /socket.io/", f.socket)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeKlectr) user(r *http.Request) (string, bool) {
	tok, ok := auth.BearerToken(r.Header.Get("Authorization"))
	if !ok {
		return "", false
	}
	c, err := f.keys.Verify(tok)
	return c.UserID, err == nil
}

func (f *fakeKlectr) upload(w http.ResponseWriter, r *http.Request) {
	user, ok := f.user(r)
	if !ok {
		http.Error(w, `{"error":{"code":"unauthorized"}}`, http.StatusUnauthorized)
		return
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20)); err != nil {
		http.Error(w, "read", http.StatusBadRequest)
		return
	}
	n := f.uploads.Add(1)
	id := fmt.Sprintf("asset-%d", n)
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, `{"assets":[{"assetId":%q,"jobId":"j","status":"processing","filename":"x.png"}]}`, id)

	to := user
	switch n {
	case f.drop:
		return
	case f.kick:
		f.mu.Lock()
		c := f.conns[user]
		f.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Write(ctx, websocket.MessageText, []byte("41"))
		return
	case f.leak:
		f.mu.Lock()
		for u := range f.conns {
			if u != user {
				to = u
				break
			}
		}
		f.mu.Unlock()
	}
	ev, _ := json.Marshal(Event{EventID: "ev-" + id, AssetID: id, UserID: user, Status: "completed",
		ProcessedAt: time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")})
	f.mu.Lock()
	c := f.conns[to]
	f.mu.Unlock()
	if c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Write(ctx, websocket.MessageText, []byte(`42["asset_processed",`+string(ev)+`]`))
	}
}

// socket speaks the server side of Engine.IO v4 + Socket.IO v5 CONNECT on a
// websocket, pings every pingInterval and closes a socket whose pong is late.
func (f *fakeKlectr) socket(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("EIO") != "4" || r.URL.Query().Get("transport") != "websocket" {
		http.Error(w, "want EIO=4&transport=websocket", http.StatusBadRequest)
		return
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	open := fmt.Sprintf(`0{"sid":"s1","upgrades":[],"pingInterval":%d,"pingTimeout":%d,"maxPayload":1000000}`,
		f.pingInterval.Milliseconds(), f.pingTimeout.Milliseconds())
	if c.Write(ctx, websocket.MessageText, []byte(open)) != nil {
		return
	}
	_, msg, err := c.Read(ctx)
	if err != nil || !strings.HasPrefix(string(msg), "40") {
		return
	}
	var a struct {
		Token string `json:"token"`
	}
	claims, err := auth.Claims{}, json.Unmarshal(msg[2:], &a)
	if err == nil {
		claims, err = f.keys.Verify(a.Token)
	}
	if err != nil {
		_ = c.Write(ctx, websocket.MessageText, []byte(`44{"message":"unauthorized"}`))
		return
	}
	f.mu.Lock()
	f.conns[claims.UserID] = c
	f.mu.Unlock()
	if c.Write(ctx, websocket.MessageText, []byte(`40{"sid":"k1"}`)) != nil {
		return
	}

	pong := make(chan struct{}, 1)
	go func() {
		defer cancel()
		for {
			_, m, err := c.Read(ctx)
			if err != nil {
				return
			}
			if string(m) == "3" {
				f.pongs.Add(1)
				select {
				case pong <- struct{}{}:
				default:
				}
			}
		}
	}()
	tick := time.NewTicker(f.pingInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if c.Write(ctx, websocket.MessageText, []byte("2")) != nil {
			return
		}
		select {
		case <-pong:
		case <-time.After(f.pingTimeout):
			f.noPong.Add(1)
			_ = c.Close(websocket.StatusNormalClosure, "ping timeout")
			return
		case <-ctx.Done():
			return
		}
	}
}
