package bench

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Several -url values stand for one cluster's api processes: the sockets
// and the upload connections are spread over all of them, and the run
// passes when the cluster delivers every event wherever the socket is.
func TestMainSpreadsOverURLs(t *testing.T) {
	t.Parallel()
	f := newFake(t, nil) // one fake behind two listeners: they share its sockets, like api processes their bus
	var uploads, sockets [2]atomic.Int64
	urls := make([]string, 2)
	for i := range urls {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/socket.io/") {
				sockets[i].Add(1)
			} else {
				uploads[i].Add(1)
			}
			f.srv.Config.Handler.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		urls[i] = srv.URL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	args := []string{"-url", strings.Join(urls, ","), "-jwt-secret", fakeSecret, "-image-bytes", "1000",
		"-users", "4", "-c", "2", "-n", "20"}
	if code := Main(ctx, args, func(string) string { return "" }, &out, &out); code != 0 {
		t.Fatalf("exit %d\n%s", code, out.String())
	}
	for i := range urls {
		if sockets[i].Load() != 2 || uploads[i].Load() == 0 {
			t.Errorf("server %d: %d sockets, %d uploads; want 2 sockets and some uploads", i, sockets[i].Load(), uploads[i].Load())
		}
	}
	if !strings.Contains(out.String(), "events 20: missing 0") {
		t.Errorf("output lacks every event:\n%s", out.String())
	}
}

func TestMainRefusesANonLoopbackURLInTheList(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	args := []string{"-url", "http://127.0.0.1:1,http://192.0.2.1:80", "-jwt-secret", fakeSecret}
	if code := Main(context.Background(), args, func(string) string { return "" }, &out, &out); code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "192.0.2.1 is not a loopback address") {
		t.Errorf("output does not name the address:\n%s", out.String())
	}
}
