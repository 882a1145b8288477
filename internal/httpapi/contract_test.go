package httpapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/httpapi"
)

// Contract tests of the HTTP API: the real handler behind httptest, the real
// auth.Keys, blob.Disk in a temporary directory and imageinfo, with in-memory
// fakes for the store and the queue (fakes_test.go). Every reply a test reads
// through env.do is also validated against api/openapi.yaml.

const testSecret = "0123456789abcdef0123456789abcdef"

// env is one API server with its own fakes and blob directory.
type env struct {
	srv     *httptest.Server
	handler http.Handler
	keys    *auth.Keys
	blobDir string
	blobs   *blob.Disk
	assets  *fakeAssets
	intake  *fakeIntake
	jobs    *fakeJobs
	limiter *fakeLimiter
	logs    *syncBuffer
	now     time.Time
}

// defaultLimits are DESIGN §1's defaults, with the progress deadline of
// New's defaults.
func defaultLimits() httpapi.Limits {
	return httpapi.Limits{MaxFiles: 10, MaxFileBytes: 10 << 20, MaxPixels: 50_000_000}
}

type envOption func(*httpapi.Deps)

func withLimits(l httpapi.Limits) envOption { return func(d *httpapi.Deps) { d.Limits = l } }

// newEnv starts an API server with fresh fakes and blob directory.
func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	e := newEnvUnstarted(t, opts...)
	e.srv.Start()
	return e
}

// newEnvUnstarted is newEnv without starting the server, so that a test can
// configure its http.Server (srv.Config) first, or call the handler alone.
func newEnvUnstarted(t *testing.T, opts ...envOption) *env {
	t.Helper()
	dir := t.TempDir()
	blobs, err := blob.NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
	e := &env{
		keys:    auth.NewKeys([]byte(testSecret), nil),
		blobDir: dir,
		blobs:   blobs,
		assets:  newFakeAssets(),
		jobs:    newFakeJobs(),
		limiter: &fakeLimiter{},
		logs:    &syncBuffer{},
		now:     now,
	}
	e.intake = &fakeIntake{assets: e.assets, jobs: e.jobs, now: now}
	d := httpapi.Deps{
		Keys:    e.keys,
		Assets:  e.assets,
		Intake:  e.intake,
		Blobs:   blobs,
		Jobs:    e.jobs,
		Limits:  defaultLimits(),
		Log:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:     func() time.Time { return now },
		NewID:   func() string { return ulid.Make().String() },
		Limiter: e.limiter,
	}
	for _, o := range opts {
		o(&d)
	}
	e.handler = httpapi.New(d)
	e.srv = httptest.NewUnstartedServer(e.handler)
	t.Cleanup(e.srv.Close)
	return e
}

// token mints a valid token for user (role "" or "admin").
func (e *env) token(t *testing.T, user, role string) string {
	t.Helper()
	tok, err := e.keys.Sign(user, role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// reply is a response with its body read.
type reply struct {
	*http.Response
	Body []byte
}

// errorBody is the contract's error shape, decoded strictly.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
		Index   *int   `json:"index"`
	} `json:"error"`
}

func (r reply) errorBody(t *testing.T) errorBody {
	t.Helper()
	var b errorBody
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("error body %q: %v", r.Body, err)
	}
	return b
}

// wantError checks status, code and that the message is not empty; it
// returns the body for further checks.
func (r reply) wantError(t *testing.T, status int, code string) errorBody {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", r.StatusCode, status, r.Body)
	}
	b := r.errorBody(t)
	if b.Error.Code != code {
		t.Fatalf("code %q, want %q; body %s", b.Error.Code, code, r.Body)
	}
	if b.Error.Message == "" {
		t.Errorf("empty message: %s", r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	return b
}

// wantFileError also checks that the error names the file at fault.
func (r reply) wantFileError(t *testing.T, status int, code string, index int, msgParts ...string) errorBody {
	t.Helper()
	b := r.wantError(t, status, code)
	if b.Error.Field != "images" || b.Error.Index == nil || *b.Error.Index != index {
		t.Errorf("field/index = %q/%v, want images/%d: %s", b.Error.Field, b.Error.Index, index, r.Body)
	}
	for _, p := range msgParts {
		if !strings.Contains(b.Error.Message, p) {
			t.Errorf("message %q does not contain %q", b.Error.Message, p)
		}
	}
	return b
}

type doOptions struct {
	noRequestCheck bool // the request breaks the contract on purpose
	noContract     bool // no contract check at all (a route the contract does not have)
}

// do sends req to the server and validates the reply against the contract:
// the request too unless it is multipart (the validator does not read
// multipart bodies) or opt says it is invalid on purpose.
func (e *env) do(t *testing.T, req *http.Request, opt ...doOptions) reply {
	t.Helper()
	var o doOptions
	if len(opt) > 0 {
		o = opt[0]
	}
	// Keep what the validator needs of the request: the client consumes
	// the body.
	check := req.Clone(req.Context())
	check.Body = http.NoBody
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if !o.noContract {
		multipartReq := strings.HasPrefix(req.Header.Get("Content-Type"), "multipart/")
		checkContract(t, check, res, body, !o.noRequestCheck && !multipartReq && req.Body == nil)
	}
	return reply{res, body}
}

// serve calls the handler in-process, for requests a real client cannot
// send (a lying Content-Length) or for measuring the handler alone.
func (e *env) serve(t *testing.T, req *http.Request) reply {
	t.Helper()
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	res := rec.Result()
	body := rec.Body.Bytes()
	checkContract(t, req, res, body, false)
	return reply{res, body}
}

// request builds a request to the server with token (none when "").
func (e *env) request(t *testing.T, method, path, token string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req
}

// get is a GET with token, validated request and reply.
func (e *env) get(t *testing.T, path, token string, opt ...doOptions) reply {
	t.Helper()
	return e.do(t, e.request(t, http.MethodGet, path, token, nil), opt...)
}

// part is one part of a multipart body.
type part struct {
	field       string
	filename    string // "" for a text field
	contentType string // the client's claim; "" for none
	data        []byte
	disposition string // when set, the Content-Disposition header verbatim
}

func filePart(filename string, data []byte) part {
	return part{field: "images", filename: filename, contentType: "application/octet-stream", data: data}
}

// multipartBody encodes parts with boundary "b0undary", writing the
// Content-Disposition header itself so that any file name — control
// characters, paths — reaches the server as the client wrote it. It closes
// the body unless open.
func multipartBody(t *testing.T, open bool, parts ...part) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	if err := w.SetBoundary(testBoundary); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		cd := `form-data; name="` + quote(p.field) + `"`
		if p.filename != "" {
			cd += `; filename="` + quote(p.filename) + `"`
		}
		if p.disposition != "" {
			cd = p.disposition
		}
		h.Set("Content-Disposition", cd)
		if p.contentType != "" {
			h.Set("Content-Type", p.contentType)
		}
		pw, err := w.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pw.Write(p.data); err != nil {
			t.Fatal(err)
		}
	}
	if !open {
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

const testBoundary = "b0undary"

const multipartType = "multipart/form-data; boundary=" + testBoundary

func quote(s string) string { return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) }

// upload posts body as multipart/form-data for token.
func (e *env) upload(t *testing.T, token string, body []byte) reply {
	t.Helper()
	req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", token, bytes.NewReader(body))
	req.Header.Set("Content-Type", multipartType)
	return e.do(t, req)
}

// blobFiles lists the regular files under the blob directory; a refused
// request must leave none (empty directories are allowed).
func (e *env) blobFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(e.blobDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(e.blobDir, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// wantNothingKept checks the all-or-nothing rule after a refusal.
func (e *env) wantNothingKept(t *testing.T) {
	t.Helper()
	if f := e.blobFiles(t); len(f) > 0 {
		t.Errorf("a refused request left files in the blob store: %v", f)
	}
	if n := len(e.intake.submitted()); n > 0 {
		t.Errorf("a refused request reached Intake.Submit %d times", n)
	}
}

func fixture(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../testdata/images", rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
