package bench

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseOpen(t *testing.T) {
	t.Parallel()
	o, err := parseOpen(`0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`)
	if err != nil || o.SID != "abc" || o.PingInterval != 25000 || o.PingTimeout != 20000 {
		t.Fatalf("parseOpen = %+v, %v", o, err)
	}
	for _, bad := range []string{``, `40{"sid":"x"}`, `0{"sid":"x"}`, `0{"sid":"","pingInterval":1,"pingTimeout":1}`, `0not json`} {
		if _, err := parseOpen(bad); err == nil {
			t.Errorf("parseOpen(%q) accepted", bad)
		}
	}
}

func TestConnectPacket(t *testing.T) {
	t.Parallel()
	if got, want := connectPacket(`a"b`), `40{"token":"a\"b"}`; got != want {
		t.Fatalf("connectPacket = %s, want %s", got, want)
	}
}

func TestParseConnectReply(t *testing.T) {
	t.Parallel()
	if err := parseConnectReply(`40{"sid":"x"}`); err != nil {
		t.Fatalf("CONNECT refused: %v", err)
	}
	if err := parseConnectReply(`44{"message":"unauthorized"}`); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Fatalf("CONNECT_ERROR: %v", err)
	}
	if err := parseConnectReply(`42["asset_processed",{}]`); err == nil {
		t.Fatal("an event before CONNECT's reply was taken for one")
	}
}

func TestParseEvent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		msg, name, arg string
		ok, err        bool
	}{
		{msg: `42["asset_processed",{"assetId":"a"}]`, name: "asset_processed", arg: `{"assetId":"a"}`, ok: true},
		{msg: `4217["x",1,2]`, name: "x", arg: `1`, ok: true},
		{msg: `42["only"]`, name: "only", ok: true},
		{msg: `2`},
		{msg: `40{"sid":"x"}`},
		{msg: `43["x"]`},
		{msg: `42{"a":1}`, ok: true, err: true},
		{msg: `42[]`, ok: true, err: true},
		{msg: `42[1]`, ok: true, err: true},
	} {
		name, arg, ok, err := parseEvent(tc.msg)
		if name != tc.name || string(arg) != tc.arg || ok != tc.ok || (err != nil) != tc.err {
			t.Errorf("parseEvent(%q) = %q, %q, %v, %v", tc.msg, name, arg, ok, err)
		}
	}
}

func TestSocketURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":       "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket",
		"https://localhost:8443/base": "wss://localhost:8443/base/socket.io/?EIO=4&transport=websocket",
	} {
		u, _ := url.Parse(in)
		if got := socketURL(u); got != want {
			t.Errorf("socketURL(%s) = %s, want %s", in, got, want)
		}
	}
}

func wsURL(f *fakeKlectr) string {
	u, _ := url.Parse(f.srv.URL)
	return socketURL(u)
}

// The client answers the server's pings, or the server closes the socket
// (as klectr does after pingInterval + pingTimeout).
func TestSocketAnswersPings(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(f *fakeKlectr) { f.pingInterval = 20 * time.Millisecond })
	tok, _ := f.keys.Sign("u1", "", time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := dialSocket(ctx, wsURL(f), tok)
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- s.serve(sctx, func(Event, time.Time) {}) }()
	for f.pongs.Load() < 10 {
		select {
		case err := <-served:
			t.Fatalf("the socket ended after %d pongs: %v", f.pongs.Load(), err)
		case <-ctx.Done():
			t.Fatalf("only %d pongs", f.pongs.Load())
		case <-time.After(10 * time.Millisecond):
		}
	}
	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve after its context ended: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after its context ended")
	}
	s.close()
	if n := f.noPong.Load(); n != 0 {
		t.Fatalf("%d pings went unanswered", n)
	}
}

func TestSocketRefusedToken(t *testing.T) {
	t.Parallel()
	f := newFake(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dialSocket(ctx, wsURL(f), "not-a-token"); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Fatalf("dialSocket with a bad token: %v", err)
	}
}
