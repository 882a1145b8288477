package console_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/klectr/klectr/internal/console"
)

func get(t *testing.T, h http.Handler, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHandlerServesTheConsole(t *testing.T) {
	t.Parallel()
	h := console.Handler()
	res := get(t, h, "/console/")
	page := body(t, res)
	if res.StatusCode != 200 || !strings.Contains(page, "<title>KLECTR console</title>") {
		t.Fatalf("GET /console/: %d %.200q", res.StatusCode, page)
	}
	csp := res.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q", got)
	}

	// Everything the page loads comes from this server: no CDN, works offline.
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 3 {
		t.Fatalf("found only %d references in index.html", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if strings.HasPrefix(ref, "#") || ref == "data:," {
			continue
		}
		if strings.Contains(ref, "//") || strings.HasPrefix(ref, "/") {
			t.Errorf("index.html loads %q from elsewhere than the console's own files", ref)
			continue
		}
		if res := get(t, h, "/console/"+ref); res.StatusCode != 200 {
			t.Errorf("GET /console/%s: %d", ref, res.StatusCode)
		}
	}
}

func TestVendoredSocketIOClient(t *testing.T) {
	t.Parallel()
	res := get(t, console.Handler(), "/console/vendor/socket.io.min.js")
	js := body(t, res)
	if res.StatusCode != 200 || !strings.HasPrefix(js, "/*!\n * Socket.IO v4.8.4\n") || !strings.Contains(js, "Released under the MIT License.") {
		t.Fatalf("the vendored client is not socket.io-client 4.8.4 with its license header: %d %.120q", res.StatusCode, js)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
		t.Errorf("Content-Type = %q", ct)
	}
}

func TestHandlerServesNothingElse(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"/console/nope.js", "/console/../console.go", "/console/static/index.html"} {
		if res := get(t, console.Handler(), path); res.StatusCode == 200 {
			t.Errorf("GET %s: 200", path)
		}
	}
}
