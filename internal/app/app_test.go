package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/auth"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestRunCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cases := []struct {
		name     string
		args     []string
		env      map[string]string
		code     int
		inStdout string
		inStderr string
	}{
		{"no args prints help", nil, nil, 0, "klectr serve", ""},
		{"help lists settings", []string{"help"}, nil, 0, "$MAX_FILE_BYTES", ""},
		{"unknown command", []string{"frobnicate"}, nil, 2, "", `unknown command "frobnicate"`},
		{"bad setting names the variable", []string{"serve"}, map[string]string{"WORKER_CONCURRENCY": "zero"}, 1, "", "WORKER_CONCURRENCY"},
		{"scale-out needs a secret", []string{"serve"}, map[string]string{"REDIS_URL": "redis://127.0.0.1:6379", "MONGODB_URI": "mongodb://127.0.0.1:1"}, 1, "", "JWT_SECRET"},
		{"a half scale-out shape is refused", []string{"serve"}, map[string]string{"REDIS_URL": "redis://127.0.0.1:6379", "JWT_SECRET": strings.Repeat("k", 32)}, 1, "", "REDIS_URL is set without MONGODB_URI"},
		{"token needs a user", []string{"token", "-data-dir", dir}, nil, 2, "", "exactly one user id"},
		{"jobs needs a subcommand", []string{"jobs"}, nil, 2, "", "list, retry or delete"},
		{"bench needs the server's secret", []string{"bench", "-url", "http://127.0.0.1:1"}, nil, 2, "", "want -jwt-secret"},
		{"jobs list refuses a bad state", []string{"jobs", "list", "-data-dir", dir, "-state", "zombie"}, nil, 2, "", "jobs list"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			code := Run(context.Background(), c.args, envOf(c.env), &out, &errb)
			if code != c.code || !strings.Contains(out.String(), c.inStdout) || !strings.Contains(errb.String(), c.inStderr) {
				t.Fatalf("Run(%q) = %d\nstdout: %s\nstderr: %s", c.args, code, out.String(), errb.String())
			}
		})
	}
}

func TestTokenUsesTheDataDirSecret(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"token", "-data-dir", dir, "-role", "admin", "alice"}, envOf(nil), &out, &errb); code != 0 {
		t.Fatalf("token: %d %s", code, errb.String())
	}
	secret, err := os.ReadFile(filepath.Join(dir, "jwt-secret"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := auth.NewKeys(bytes.TrimSpace(secret), nil).Verify(strings.TrimSpace(out.String()))
	if err != nil || c.UserID != "alice" || !c.IsAdmin() {
		t.Fatalf("claims %+v, %v", c, err)
	}
	if !strings.Contains(errb.String(), "JWT_SECRET is not set") {
		t.Fatalf("no warning about the generated secret: %s", errb.String())
	}
}

// server is a klectr serve running in this test process.
type server struct {
	t     *testing.T
	url   string
	dir   string
	done  chan int
	stop  context.CancelFunc
	logs  *lockedBuffer
	keys  *auth.Keys
	alice string
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startServer runs `klectr serve` on a free loopback port with env on top
// of a fresh data directory, and waits until it listens.
func startServer(t *testing.T, env map[string]string) *server {
	t.Helper()
	return startMode(t, modeServe, env)
}

// startMode is startServer for any server subcommand.
func startMode(t *testing.T, m mode, env map[string]string) *server {
	t.Helper()
	dir := t.TempDir()
	secret := strings.Repeat("k", 32)
	full := map[string]string{"ADDR": "127.0.0.1:0", "DATA_DIR": dir, "JWT_SECRET": secret, "LOG_LEVEL": "debug"}
	for k, v := range env {
		full[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	s := &server{t: t, dir: dir, done: make(chan int, 1), stop: cancel, logs: &lockedBuffer{},
		keys: auth.NewKeys([]byte(secret), nil)}
	s.alice, _ = s.keys.Sign("alice", "", time.Hour)
	go func() {
		s.done <- Run(ctx, []string{string(m)}, envOf(full), io.Discard, pw)
		pw.Close()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Bytes()
			s.logs.Write(append(append([]byte{}, line...), '\n'))
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" {
				addr <- rec.Addr
			}
		}
	}()
	select {
	case a := <-addr:
		s.url = "http://" + a
	case code := <-s.done:
		t.Fatalf("serve exited with %d before listening:\n%s", code, s.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not listen within 30s:\n%s", s.logs.String())
	}
	t.Cleanup(func() { s.shutdown() })
	return s
}

// shutdown stops the server as SIGTERM would and returns its exit code.
func (s *server) shutdown() int {
	s.stop()
	select {
	case code := <-s.done:
		s.done <- code
		return code
	case <-time.After(60 * time.Second):
		s.t.Fatalf("serve did not stop within 60s:\n%s", s.logs.String())
		return -1
	}
}

func (s *server) do(method, path, token string, body io.Reader, contentType string) (*http.Response, []byte) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// upload posts files (paths under testdata/images) in field images.
func (s *server) upload(token string, files ...string) (*http.Response, []byte) {
	s.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "images", f))
		if err != nil {
			s.t.Fatal(err)
		}
		w, _ := mw.CreateFormFile("images", filepath.Base(f))
		w.Write(data)
	}
	mw.Close()
	return s.do("POST", "/api/assets/analyze-queue", token, &body, mw.FormDataContentType())
}

type assetReply struct {
	ID, Status, ProcessingJobID string
	Attempts                    int
	Width, Height               int
	AIMetadata                  map[string]any
	Error                       *struct{ Code, Message string }
}

// waitFinal polls the asset until it leaves processing.
func (s *server) waitFinal(token, id string) assetReply {
	s.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, b := s.do("GET", "/api/assets/"+id, token, nil, "")
		if resp.StatusCode != 200 {
			s.t.Fatalf("GET asset %s: %d %s", id, resp.StatusCode, b)
		}
		var a assetReply
		if err := json.Unmarshal(b, &a); err != nil {
			s.t.Fatal(err)
		}
		if a.Status != "processing" {
			return a
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("asset %s still processing after 3m:\n%s", id, s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// uploadOK uploads files and returns the accepted asset ids.
func (s *server) uploadOK(token string, files ...string) []string {
	s.t.Helper()
	t := s.t
	resp, b := s.upload(token, files...)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	var r struct {
		Assets []struct{ AssetID, JobID, Status string }
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(r.Assets))
	for i, a := range r.Assets {
		ids[i] = a.AssetID
	}
	return ids
}

// countFiles counts the blob files under the data directory.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func TestServeEveryFixtureEndsFinal(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	valid, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "images", "valid", "*"))
	var names []string
	for _, v := range valid {
		names = append(names, filepath.Join("valid", filepath.Base(v)))
	}
	// Ten files per request at most (MAX_FILES).
	var ids []string
	for len(names) > 0 {
		n := min(len(names), 10)
		ids = append(ids, s.uploadOK(s.alice, names[:n]...)...)
		names = names[n:]
	}
	for _, id := range ids {
		a := s.waitFinal(s.alice, id)
		if a.Status != "draft" || a.AIMetadata["provider"] != "builtin" || a.AIMetadata["width"] == nil || a.Attempts != 1 {
			t.Errorf("asset %s: %+v", id, a)
		}
	}

	// Pixel-corrupt PNGs have good headers: accepted, then failed at once.
	for _, f := range []string{"invalid-noend.png", "invalid-trunc.png", "invalid-zlib.png"} {
		ids := s.uploadOK(s.alice, filepath.Join("invalid", f))
		a := s.waitFinal(s.alice, ids[0])
		if a.Status != "failed" || a.Attempts != 1 || a.Error == nil || a.Error.Code != "image_undecodable" || a.AIMetadata != nil {
			t.Errorf("%s: %+v", f, a)
		}
	}
}

func TestServeRefusedUploadLeavesNothing(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"MAX_FILES": "3"})
	before := countFiles(t, s.dir)
	cases := []struct {
		files  []string
		status int
		code   string
	}{
		{[]string{"valid/video-001.png", "valid/tux.lossless.webp", "unsupported/video-001.bmp"}, 415, "unsupported_media_type"},
		{[]string{"valid/video-001.png", "invalid/bomb-30000x30000.png"}, 422, "invalid_image"},
		{[]string{"valid/video-001.png", "invalid/invalid-crc32.png"}, 422, "invalid_image"},
		{[]string{"valid/video-001.png", "valid/video-001.png", "valid/video-001.png", "valid/video-001.png"}, 400, "too_many_files"},
		{[]string{"invalid/not-an-image.jpg"}, 415, "unsupported_media_type"},
	}
	for _, c := range cases {
		resp, b := s.upload(s.alice, c.files...)
		var e struct {
			Error struct{ Code, Message string }
		}
		json.Unmarshal(b, &e)
		if resp.StatusCode != c.status || e.Error.Code != c.code {
			t.Errorf("%v: %d %s, want %d %s", c.files, resp.StatusCode, b, c.status, c.code)
		}
	}
	if n := countFiles(t, s.dir); n != before {
		t.Errorf("refused uploads left %d blob files", n-before)
	}
	resp, b := s.do("GET", "/api/assets", s.alice, nil, "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"assets":[]`) {
		t.Errorf("refused uploads left assets: %s", b)
	}
	admin, _ := s.keys.Sign("ops", "admin", time.Hour)
	resp, b = s.do("GET", "/api/admin/queues", admin, nil, "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"pending":0`) || !strings.Contains(string(b), `"completed":0`) {
		t.Errorf("refused uploads left jobs: %d %s", resp.StatusCode, b)
	}
	_, b = s.do("GET", "/metrics", "", nil, "")
	for _, want := range []string{
		`klectr_http_request_duration_seconds_count{code="415",route="POST /api/assets/analyze-queue"} 2`,
		`klectr_queue_jobs{state="pending"} 0`,
		`klectr_realtime_sockets 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestServeIsolatesUsersAndStopsCleanly(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	ids := s.uploadOK(s.alice, "valid/video-001.png")
	bob, _ := s.keys.Sign("bob", "", time.Hour)
	if resp, b := s.do("GET", "/api/assets/"+ids[0], bob, nil, ""); resp.StatusCode != 404 {
		t.Fatalf("bob reads alice's asset: %d %s", resp.StatusCode, b)
	}
	if resp, b := s.do("GET", "/api/assets", bob, nil, ""); !strings.Contains(string(b), `"assets":[]`) {
		t.Fatalf("bob lists alice's assets: %d %s", resp.StatusCode, b)
	}
	s.waitFinal(s.alice, ids[0])
	if code := s.shutdown(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	logs := s.logs.String()
	order := []string{`"msg":"stopping"`, `"msg":"realtime server stopped"`, `"msg":"HTTP server stopped"`, `"msg":"worker stopped"`, `"msg":"sweeps stopped"`, `"msg":"stopped"`}
	last := -1
	for _, m := range order {
		i := strings.Index(logs, m)
		if i < 0 || i < last {
			t.Fatalf("shutdown order: %s is missing or came before the step it follows:\n%s", m, logs)
		}
		last = i
	}
}

func TestServeAddrInUseStopsInOrder(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	var errb lockedBuffer
	code := Run(context.Background(), []string{"serve"}, envOf(map[string]string{
		"ADDR": strings.TrimPrefix(s.url, "http://"), "DATA_DIR": t.TempDir(), "JWT_SECRET": strings.Repeat("k", 32),
	}), io.Discard, &errb)
	if code != 1 || !strings.Contains(errb.String(), "ADDR=") || !strings.Contains(errb.String(), `"msg":"worker stopped"`) {
		t.Fatalf("exit %d; want 1 naming ADDR after stopping the worker:\n%s", code, errb.String())
	}
}

func TestJobsCommands(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	ids := s.uploadOK(s.alice, "invalid/invalid-zlib.png")
	a := s.waitFinal(s.alice, ids[0])
	if a.Status != "failed" {
		t.Fatalf("asset %+v", a)
	}
	env := envOf(map[string]string{"DATA_DIR": s.dir, "JWT_SECRET": strings.Repeat("k", 32)})
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), args, env, &out, &errb)
		return code, out.String(), errb.String()
	}

	// The asset is failed a moment before its job is marked dead.
	var code int
	var out, errs string
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if code, out, errs = run("jobs", "list", "-state", "dead"); out != "" {
			break
		}
	}
	var line struct {
		ID, State, LastError string
		Payload              struct{ AssetID string }
	}
	if code != 0 || json.Unmarshal([]byte(out), &line) != nil || line.ID != a.ProcessingJobID || line.State != "dead" ||
		line.Payload.AssetID != ids[0] || !strings.Contains(line.LastError, "image") {
		t.Fatalf("jobs list: %d %q %s", code, out, errs)
	}

	// Replay: the asset goes back to processing under the same job and,
	// the image being broken, fails again.
	if code, out, errs := run("jobs", "retry", line.ID); code != 0 || !strings.Contains(out, "replayed") {
		t.Fatalf("jobs retry: %d %q %s", code, out, errs)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, b := s.do("GET", "/api/assets/"+ids[0], s.alice, nil, "")
		var again assetReply
		json.Unmarshal(b, &again)
		if resp.StatusCode == 200 && again.Status == "failed" && again.ProcessingJobID == line.ID {
			code, out, _ := run("jobs", "list", "-state", "dead")
			if code == 0 && strings.Contains(out, line.ID) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("replayed job did not end dead again: %s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _, errs := run("jobs", "retry", "01NOTAJOB0000000000000000"); code != 1 || !strings.Contains(errs, "not found") {
		t.Fatalf("retry of an unknown job: %d %s", code, errs)
	}
	if code, out, errs := run("jobs", "delete", line.ID); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("jobs delete: %d %q %s", code, out, errs)
	}
	if code, out, _ := run("jobs", "list", "-state", "dead"); code != 0 || out != "" {
		t.Fatalf("dead jobs after delete: %q", out)
	}
}

// Issue 7, defect 3: deleting a job that has not run (through the admin API
// or `klectr jobs delete`) fails its asset with job_deleted instead of
// leaving it processing for ever; its owner can retry it. klectr api runs
// no worker, so the jobs stay pending.
func TestDeletingAPendingJobFailsItsAsset(t *testing.T) {
	t.Parallel()
	s := startMode(t, modeAPI, nil)
	admin, _ := s.keys.Sign("ops", "admin", time.Hour)
	ids := s.uploadOK(s.alice, "valid/go-turns-two-280x360.jpeg", "valid/go-turns-two-280x360.jpeg")
	jobOf := func(id string) string {
		var a assetReply
		resp, b := s.do("GET", "/api/assets/"+id, s.alice, nil, "")
		if resp.StatusCode != 200 || json.Unmarshal(b, &a) != nil || a.Status != "processing" {
			t.Fatalf("asset %s: %d %s", id, resp.StatusCode, b)
		}
		return a.ProcessingJobID
	}
	viaAPI, viaCLI := jobOf(ids[0]), jobOf(ids[1])

	if resp, b := s.do("DELETE", "/api/admin/jobs/"+viaAPI, admin, nil, ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("admin delete: %d %s", resp.StatusCode, b)
	}
	env := envOf(map[string]string{"DATA_DIR": s.dir, "JWT_SECRET": strings.Repeat("k", 32)})
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"jobs", "delete", viaCLI}, env, &out, &errb); code != 0 {
		t.Fatalf("jobs delete: %d %s %s", code, out.String(), errb.String())
	}
	for _, id := range ids {
		a := s.waitFinal(s.alice, id)
		if a.Status != "failed" || a.Error == nil || a.Error.Code != "job_deleted" {
			t.Fatalf("asset %s after its job was deleted: %+v", id, a)
		}
		if resp, b := s.do("POST", "/api/assets/"+id+"/retry", s.alice, nil, ""); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("retry after the delete: %d %s", resp.StatusCode, b)
		}
	}
}

// klectr worker answers the probes on ADDR, like every process, and serves
// no API.
func TestWorkerServesOnlyTheProbes(t *testing.T) {
	t.Parallel()
	s := startMode(t, modeWorker, nil)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/api/assets": 404, "/socket.io/?EIO=4&transport=polling": 404} {
		resp, b := s.do("GET", path, s.alice, nil, "")
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d: %s", path, resp.StatusCode, want, b)
		}
		if path == "/metrics" && !strings.Contains(string(b), "klectr_queue_jobs") {
			t.Errorf("worker metrics lack the queue: %.300s", b)
		}
	}
	if code := s.shutdown(); code != 0 {
		t.Fatalf("worker exit %d:\n%s", code, s.logs.String())
	}
}

// Issue 7, defect 5's wiring: klectr serve deletes at start-up the blobs no
// asset references that a killed process left (and its unfinished uploads),
// and keeps every referenced one.
func TestServeSweepsOrphanBlobsAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := startMode(t, modeServe, map[string]string{"DATA_DIR": dir})
	ids := s.uploadOK(s.alice, "valid/video-001.png")
	s.waitFinal(s.alice, ids[0])
	if code := s.shutdown(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	kept := countFiles(t, dir)
	orphan := filepath.Join(dir, "blobs", "ab", "ab"+strings.Repeat("0", 30))
	temp := filepath.Join(dir, "blobs", "tmp", "upload-123")
	old := time.Now().Add(-time.Minute)
	for _, p := range []string{orphan, temp} {
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("left by kill -9"), 0o640); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}

	s = startMode(t, modeServe, map[string]string{"DATA_DIR": dir})
	waitFor(t, 30*time.Second, "the orphans to be swept", func() bool {
		_, e1 := os.Stat(orphan)
		_, e2 := os.Stat(temp)
		return errors.Is(e1, os.ErrNotExist) && errors.Is(e2, os.ErrNotExist)
	})
	if n := countFiles(t, dir); n != kept {
		t.Fatalf("%d blob files after the sweep, want the %d referenced", n, kept)
	}
	if a := s.waitFinal(s.alice, ids[0]); a.Status != "draft" {
		t.Fatalf("the swept process's asset: %+v", a)
	}
}
