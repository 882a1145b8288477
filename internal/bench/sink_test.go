package bench

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
)

// The durable sink has each part on disk, whole, when it answers, and
// removes it afterwards; a body it cannot parse gets a 400.
func TestDurableSink(t *testing.T) {
	dir := t.TempDir()
	var seen [][]byte
	h := durableSink(dir)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, content := range []string{"first file", "second file"} {
		pw, _ := mw.CreateFormFile("files", "a.png")
		pw.Write([]byte(content))
	}
	mw.Close()
	req := httptest.NewRequest(http.MethodPost, "/", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	rec := httptest.NewRecorder()
	// Look at the directory as the 202 is written: the files are there.
	spy := &headerSpy{ResponseRecorder: rec, onHeader: func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			b, _ := os.ReadFile(dir + "/" + e.Name())
			seen = append(seen, b)
		}
	}}
	h.ServeHTTP(spy, req)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("status %d, want 202", rec.Code)
	}
	got := map[string]bool{}
	for _, b := range seen {
		got[string(b)] = true
	}
	if len(seen) != 2 || !got["first file"] || !got["second file"] {
		t.Errorf("on disk at the 202: %q, want both files whole", seen)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("%d files left after the request", len(left))
	}

	bad := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader([]byte("not multipart")))
	bad.Header.Set("Content-Type", "text/plain")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, bad)
	if rec.Code != http.StatusBadRequest {
		t.Errorf("a body that is not multipart: status %d, want 400", rec.Code)
	}
}

type headerSpy struct {
	*httptest.ResponseRecorder
	onHeader func()
}

func (s *headerSpy) WriteHeader(code int) {
	s.onHeader()
	s.ResponseRecorder.WriteHeader(code)
}
