package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/realtime"
)

// dribble sends head (request line and headers) on a fresh connection, then
// one byte of body every every, and returns how long the server took to
// answer and to close the connection. The whole exchange is bounded by
// limit, so a server that waits for the body fails the test, not hangs it.
func dribble(t *testing.T, addr, head string, every, limit time.Duration) (status int, answered, closed time.Duration) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	_ = conn.SetDeadline(start.Add(limit))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte{'x'}); err != nil {
				return
			}
		}
	}()
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response within %v (%v): the server waits for the trickled body", limit, err)
	}
	answered = time.Since(start)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	// The connection must end: the rest of the body is not waited for.
	if _, err := br.ReadByte(); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection is still open after %v", limit)
	}
	return res.StatusCode, answered, time.Since(start)
}

// TestTrickledBodiesDoNotHoldConnections: a client declaring a large body and
// sending a byte every 50 ms gets its answer and loses its connection within
// about one BodyWindow, on every kind of route: one that takes no body,
// one that takes none but is a POST, a refused upload, and an Engine.IO
// polling POST, which reads its body.
func TestTrickledBodiesDoNotHoldConnections(t *testing.T) {
	t.Parallel()
	rt, err := realtime.New(realtime.Options{
		Authenticate: func(string) (string, time.Time, error) { return "", time.Time{}, realtime.ErrUnauthorized },
		Bus:          realtime.NewLocalBus(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Stop)
	lim := defaultLimits()
	lim.MinBodyBytes, lim.BodyWindow = 1<<10, 300*time.Millisecond
	e := newEnvUnstarted(t, withLimits(lim), func(d *httpapi.Deps) { d.Socket = rt })
	e.srv.Config.ReadHeaderTimeout = 2 * time.Second
	e.srv.Start()
	addr := e.srv.Listener.Addr().String()

	res, err := http.Get(e.srv.URL + "/socket.io/?EIO=4&transport=polling")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var open struct{ SID string }
	if err := json.Unmarshal(b[1:], &open); err != nil || open.SID == "" {
		t.Fatalf("handshake %q: %v", b, err)
	}

	const limit = 5 * time.Second
	for _, tc := range []struct {
		name, head string
		status     int // 0: any
	}{
		{"GET without a body", "GET /healthz HTTP/1.1\r\nHost: k\r\nContent-Length: 200000\r\n\r\n", 0},
		{"GET chunked", "GET /healthz HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n", 0},
		{"POST that reads no body", "POST /api/assets/x/retry HTTP/1.1\r\nHost: k\r\nContent-Length: 200000\r\n\r\n", 0},
		{"upload without a token", "POST /api/assets/analyze-queue HTTP/1.1\r\nHost: k\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 200000\r\n\r\n", 0},
		{"upload with a token", "POST /api/assets/analyze-queue HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer " + e.token(t, "u1", "") +
			"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 200000\r\n\r\n", 0},
		{"Engine.IO polling POST", "POST /socket.io/?EIO=4&transport=polling&sid=" + open.SID +
			" HTTP/1.1\r\nHost: k\r\nContent-Type: text/plain\r\nContent-Length: 60000\r\n\r\n", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			status, answered, closed := dribble(t, addr, tc.head, 50*time.Millisecond, limit)
			t.Logf("status %d after %v, closed after %v", status, answered.Round(time.Millisecond), closed.Round(time.Millisecond))
			if tc.status != 0 && status != tc.status {
				t.Errorf("status %d, want %d", status, tc.status)
			}
			if closed > 3*time.Second {
				t.Errorf("the connection lasted %v; the body window is %v", closed, lim.BodyWindow)
			}
		})
	}
}

// TestBodyReadInTimeKeepsTheConnection: a body that arrives within the
// window is read as before and the connection stays usable.
func TestBodyReadInTimeKeepsTheConnection(t *testing.T) {
	t.Parallel()
	lim := defaultLimits()
	lim.BodyWindow = 2 * time.Second
	e := newEnvUnstarted(t, withLimits(lim))
	e.srv.Start()
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	for i := range 3 {
		fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\nhello")
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on one connection: %v", i, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(b), "ok") || res.Close {
			t.Fatalf("request %d: %d %q close=%v", i, res.StatusCode, b, res.Close)
		}
	}
}
