package app

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver, to read the data directory after a run
)

// aiCall is one request the fake AI service received.
type aiCall struct {
	AssetID string
	Call    int       // 1 for the asset's first call
	At      time.Time // when its body had been read
	Status  int       // the answer; 0 while pending or when the caller went away
}

// aiRespond answers one call: seq is the asset's rank in order of first
// arrival, call the asset's call number. A status of 0 writes nothing (the
// caller has gone).
type aiRespond func(r *http.Request, assetID string, seq, call int) (status int, body string)

// fakeAI is an httptest AI service (DESIGN §5) that records every call per
// asset.
type fakeAI struct {
	srv     *httptest.Server
	respond aiRespond

	mu      sync.Mutex
	calls   []aiCall
	byAsset map[string][]int // indexes into calls
	seq     map[string]int
	changed chan struct{} // closed and replaced at each arrival
}

func newFakeAI(t *testing.T, respond aiRespond) *fakeAI {
	t.Helper()
	f := &fakeAI{respond: respond, byAsset: map[string][]int{}, seq: map[string]int{}, changed: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAI) url() string { return f.srv.URL }

func (f *fakeAI) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/analyze" {
		http.Error(w, "no such endpoint", http.StatusNotFound)
		return
	}
	assetID, err := readAIForm(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	s, ok := f.seq[assetID]
	if !ok {
		s = len(f.seq)
		f.seq[assetID] = s
	}
	i := len(f.calls)
	call := len(f.byAsset[assetID]) + 1
	f.calls = append(f.calls, aiCall{AssetID: assetID, Call: call, At: time.Now()})
	f.byAsset[assetID] = append(f.byAsset[assetID], i)
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()

	status, body := f.respond(r, assetID, s, call)
	if status == 0 || r.Context().Err() != nil {
		return
	}
	f.mu.Lock()
	f.calls[i].Status = status
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// readAIForm reads the multipart body and returns its assetId field.
func readAIForm(r *http.Request) (string, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return "", err
	}
	var assetID string
	var image int64
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", err
		}
		switch p.FormName() {
		case "assetId":
			b, err := io.ReadAll(io.LimitReader(p, 100))
			if err != nil {
				return "", err
			}
			assetID = string(b)
		case "image":
			if image, err = io.Copy(io.Discard, p); err != nil {
				return "", err
			}
		}
	}
	if assetID == "" || image == 0 {
		return "", fmt.Errorf("assetId %q with %d image bytes", assetID, image)
	}
	return assetID, nil
}

// callsOf returns the calls for one asset, in order.
func (f *fakeAI) callsOf(assetID string) []aiCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []aiCall
	for _, i := range f.byAsset[assetID] {
		out = append(out, f.calls[i])
	}
	return out
}

func (f *fakeAI) all() []aiCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]aiCall(nil), f.calls...)
}

// waitCalls waits until at least n calls have arrived.
func (f *fakeAI) waitCalls(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	f.waitUntil(t, timeout, fmt.Sprintf("%d AI calls", n), func(calls []aiCall) bool { return len(calls) >= n })
}

// waitUntil waits until cond holds of the calls so far.
func (f *fakeAI) waitUntil(t *testing.T, timeout time.Duration, what string, cond func([]aiCall) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		ok, changed := cond(f.calls), f.changed
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("waited %v for %s; the AI has had %d calls", timeout, what, len(f.all()))
		}
	}
}

// fixture reads an image of testdata/images.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "images", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// postImages uploads n copies of image in one request and returns the
// accepted asset ids. It does not touch t, so it may run in any goroutine.
func postImages(ctx context.Context, baseURL, token string, image []byte, n int) ([]string, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for i := range n {
		w, err := mw.CreateFormFile("images", fmt.Sprintf("card-%d.jpg", i))
		if err != nil {
			return nil, err
		}
		w.Write(image)
	}
	mw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/api/assets/analyze-queue", &body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return acceptedIDs(http.DefaultClient.Do(req))
}

// acceptedIDs reads a 202 reply of analyze-queue.
func acceptedIDs(resp *http.Response, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return nil, fmt.Errorf("upload: %d %s", resp.StatusCode, b)
	}
	var r struct {
		Assets []struct{ AssetID, JobID, Status string }
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("upload reply %s: %w", b, err)
	}
	ids := make([]string, len(r.Assets))
	for i, a := range r.Assets {
		if a.Status != "processing" || a.AssetID == "" || a.JobID == "" {
			return nil, fmt.Errorf("upload reply %s", b)
		}
		ids[i] = a.AssetID
	}
	return ids, nil
}

// getJSON GETs path with token into v and returns the status.
func getJSON(baseURL, path, token string, v any) (int, error) {
	req, err := http.NewRequest(http.MethodGet, baseURL+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, v); err != nil {
			return resp.StatusCode, fmt.Errorf("GET %s: %s: %w", path, b, err)
		}
	}
	return resp.StatusCode, nil
}

// waitAllFinal polls the assets (owner token by id) until none is
// processing, and returns them.
func waitAllFinal(t *testing.T, baseURL string, owners map[string]string, timeout time.Duration) map[string]assetReply {
	t.Helper()
	out := make(map[string]assetReply, len(owners))
	deadline := time.Now().Add(timeout)
	for {
		for id, token := range owners {
			if _, done := out[id]; done {
				continue
			}
			var a assetReply
			status, err := getJSON(baseURL, "/api/assets/"+id, token, &a)
			if err != nil || status != http.StatusOK {
				t.Fatalf("GET asset %s: %d %v", id, status, err)
			}
			if a.Status != "processing" {
				out[id] = a
			}
		}
		if len(out) == len(owners) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d assets still processing after %v", len(owners)-len(out), len(owners), timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not waiting for a guess
	}
}

// queueCounts reads GET /api/admin/queues.
func queueCounts(t *testing.T, baseURL, admin string) map[string]int {
	t.Helper()
	var r struct {
		Queues []struct {
			Name   string
			Counts map[string]int
		}
	}
	if status, err := getJSON(baseURL, "/api/admin/queues", admin, &r); err != nil || status != http.StatusOK || len(r.Queues) != 1 {
		t.Fatalf("GET /api/admin/queues: %d %v %+v", status, err, r)
	}
	return r.Queues[0].Counts
}

// waitCounts polls the admin counts until want holds (the queue records a
// job's end a moment after its handler returns), and returns the last ones.
func waitCounts(t *testing.T, baseURL, admin string, timeout time.Duration, want func(map[string]int) bool) map[string]int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := queueCounts(t, baseURL, admin)
		if want(c) || time.Now().After(deadline) {
			return c
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// storedAsset is an asset row as the embedded store left it on disk.
type storedAsset struct {
	Status, JobID, EventID string
	EventPending           bool
	Attempts               int
}

// readStoredAssets opens DATA_DIR/klectr.db read-only (the process that
// wrote it has stopped) and returns its assets by id.
func readStoredAssets(t *testing.T, dataDir string) map[string]storedAsset {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(dataDir, "klectr.db")+"?_pragma=query_only(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT id, status, processing_job_id, event_id, event_pending, attempts FROM assets`)
	if err != nil {
		t.Fatalf("read assets: %v", err)
	}
	defer rows.Close()
	out := map[string]storedAsset{}
	for rows.Next() {
		var id string
		var a storedAsset
		if err := rows.Scan(&id, &a.Status, &a.JobID, &a.EventID, &a.EventPending, &a.Attempts); err != nil {
			t.Fatal(err)
		}
		out[id] = a
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
