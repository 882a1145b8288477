package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/wire"
)

// fakeStore is an in-memory pipeline.Store that keeps asset.Store's
// contract: RecordAttempt and Finish act only on an asset processing under
// the given job (else ErrConflict, or ErrNotFound when there is none),
// Finish sets the event id and the owed mark in the same update, EventSent
// clears the mark only for the owed event id, and every call honours ctx.
type fakeStore struct {
	mu     sync.Mutex
	assets map[string]*asset.Asset
	gets   int // calls of Get
	marks  int // calls of EventSent
	// logsEvents: Finish records the event as sent with the final state,
	// as sqlitestore does with LogEvents.
	logsEvents bool
}

var _ pipeline.Store = (*fakeStore)(nil)

func newFakeStore() *fakeStore { return &fakeStore{assets: map[string]*asset.Asset{}} }

func (s *fakeStore) put(a *asset.Asset) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.assets[a.ID] = a.Clone()
}

// get returns the stored asset, failing t when there is none.
func (s *fakeStore) get(t *testing.T, id string) *asset.Asset {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.assets[id]
	if !ok {
		t.Fatalf("asset %s is not in the store", id)
	}
	return a.Clone()
}

func (s *fakeStore) Get(ctx context.Context, id string) (*asset.Asset, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	a, ok := s.assets[id]
	if !ok {
		return nil, fmt.Errorf("fake store: get %s: %w", id, asset.ErrNotFound)
	}
	return a.Clone(), nil
}

// processing returns the asset if it is processing under jobID.
func (s *fakeStore) processing(id, jobID string) (*asset.Asset, error) {
	a, ok := s.assets[id]
	switch {
	case !ok:
		return nil, asset.ErrNotFound
	case a.Status != asset.StatusProcessing || a.ProcessingJobID != jobID:
		return nil, asset.ErrConflict
	}
	return a, nil
}

func (s *fakeStore) RecordAttempt(ctx context.Context, id, jobID string, attempt int, now time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.processing(id, jobID)
	if err != nil {
		return fmt.Errorf("fake store: record attempt %s: %w", id, err)
	}
	a.Attempts, a.UpdatedAt = attempt, now
	if a.StartedAt == nil {
		a.StartedAt = &now
	}
	return nil
}

func (s *fakeStore) Finish(ctx context.Context, id, jobID string, out asset.Outcome) (*asset.Asset, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if out.Status != asset.StatusDraft && out.Status != asset.StatusFailed {
		return nil, fmt.Errorf("fake store: finish %s: outcome status %q is not final", id, out.Status)
	}
	if out.EventID == "" {
		return nil, fmt.Errorf("fake store: finish %s: outcome has no event id", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.processing(id, jobID)
	if err != nil {
		return nil, fmt.Errorf("fake store: finish %s: %w", id, err)
	}
	at := out.ProcessedAt.UTC().Truncate(time.Millisecond) // the stores keep milliseconds
	a.Status, a.AIMetadata, a.Error, a.Attempts = out.Status, bytes.Clone(out.AIMetadata), out.Error, out.Attempts
	a.ProcessedAt, a.UpdatedAt = &at, at
	a.EventID, a.EventPending = out.EventID, true
	a.AnalyzedAt, a.EventSentAt = out.AnalyzedAt, nil
	if s.logsEvents {
		a.EventPending, a.EventSentAt = false, &at
	}
	return a.Clone(), nil
}

func (s *fakeStore) PendingEvents(ctx context.Context, limit int) ([]*asset.Asset, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, fmt.Errorf("fake store: pending events: limit %d", limit)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*asset.Asset
	for _, a := range s.assets {
		if a.EventPending {
			out = append(out, a.Clone())
		}
	}
	slices.SortFunc(out, func(a, b *asset.Asset) int {
		if c := a.ProcessedAt.Compare(*b.ProcessedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out[:min(limit, len(out))], nil
}

func (s *fakeStore) EventSent(ctx context.Context, id, eventID string, sentAt time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.marks++
	if a, ok := s.assets[id]; ok && a.EventPending && a.EventID == eventID {
		a.EventPending, a.EventSentAt = false, &sentAt
	}
	return nil
}

// sent is one event a notifier was asked to deliver.
type sent struct {
	UserID, Event string
	Data          []byte // the JSON the realtime server would send
	Err           error  // what Send returned
}

// notifier records every Send; while fail is set, Send returns it.
type notifier struct {
	mu    sync.Mutex
	calls []sent
	fail  error
}

func (n *notifier) Send(ctx context.Context, userID, event string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, sent{UserID: userID, Event: event, Data: b, Err: n.fail})
	return n.fail
}

func (n *notifier) setFail(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fail = err
}

// delivered returns the events Send accepted.
func (n *notifier) delivered() []sent {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []sent
	for _, c := range n.calls {
		if c.Err == nil {
			out = append(out, c)
		}
	}
	return out
}

func (n *notifier) attempts() []sent {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.calls)
}

// aiRequest is what the fake AI service saw of one request.
type aiRequest struct {
	Auth, AssetID, FileType string
	Image                   []byte
}

// fakeAI is an httptest AI service. respond answers call n (1-based) after
// the request's multipart body has been read.
type fakeAI struct {
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []aiRequest
	respond func(w http.ResponseWriter, r *http.Request, n int)
}

func newFakeAI(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, n int)) *fakeAI {
	t.Helper()
	f := &fakeAI{respond: respond}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/analyze" {
			http.Error(w, "wrong endpoint", http.StatusNotFound)
			return
		}
		// A call counts from its arrival: a client that gives up while
		// sending the body (a short AI_TIMEOUT on a busy machine) made it.
		f.mu.Lock()
		f.reqs = append(f.reqs, aiRequest{Auth: r.Header.Get("Authorization")})
		n := len(f.reqs)
		f.mu.Unlock()
		req := aiRequest{Auth: r.Header.Get("Authorization")}
		mr, err := r.MultipartReader()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for {
			p, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			b, _ := io.ReadAll(p)
			switch p.FormName() {
			case "assetId":
				req.AssetID = string(b)
			case "image":
				req.Image, req.FileType = b, p.Header.Get("Content-Type")
			}
		}
		f.mu.Lock()
		f.reqs[n-1] = req
		f.mu.Unlock()
		f.respond(w, r, n)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAI) requests() []aiRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

func (f *fakeAI) calls() int { return len(f.requests()) }

// refusedURL is the URL of a loopback port that refuses connections: a
// socket is bound to it but never listens, so the port cannot be taken by
// another test's listener while this test runs.
func refusedURL(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// clock is the handler's injected clock; tests move it.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is a Handler wired to fakes, the real blob.Disk and the real ai.Client.
type env struct {
	t       *testing.T
	store   *fakeStore
	blobs   *blob.Disk
	notes   *notifier
	ai      *fakeAI
	clock   *clock
	h       *pipeline.Handler
	image   []byte
	aiToken string
}

type envOptions struct {
	timeout time.Duration // AI_TIMEOUT; default 10 s
	baseURL string        // default: the fake AI
}

const maxAttempts = 4 // JOB_MAX_RETRIES=3

func newEnv(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, n int), o envOptions) *env {
	t.Helper()
	e := &env{t: t, store: newFakeStore(), notes: &notifier{}, aiToken: "ai-secret-token",
		clock: &clock{now: time.Date(2026, 11, 29, 1, 2, 3, 456_789_000, time.UTC)}}
	e.ai = newFakeAI(t, respond)
	var err error
	if e.blobs, err = blob.NewDisk(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if e.image, err = os.ReadFile("../../testdata/images/valid/video-001.q50.420.jpeg"); err != nil {
		t.Fatal(err)
	}
	if o.timeout == 0 {
		o.timeout = 10 * time.Second
	}
	if o.baseURL == "" {
		o.baseURL = e.ai.srv.URL
	}
	client, err := ai.NewClient(ai.ClientConfig{BaseURL: o.baseURL, Token: e.aiToken, Timeout: o.timeout})
	if err != nil {
		t.Fatal(err)
	}
	e.h = &pipeline.Handler{
		Store:    e.store,
		Blobs:    e.blobs,
		Analyzer: client,
		Notifier: e.notes,
		Log:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:      e.clock.Now,
		NewID:    func() string { return ulid.Make().String() },
	}
	return e
}

// newAsset stores an image and a processing asset for user u1, and returns
// the asset and its job at its first attempt.
func (e *env) newAsset() (*asset.Asset, *queue.Job) {
	e.t.Helper()
	ctx := context.Background()
	key, err := e.blobs.Put(ctx, bytes.NewReader(e.image))
	if err != nil {
		e.t.Fatal(err)
	}
	now := e.clock.Now().Add(-time.Minute)
	a := &asset.Asset{
		ID: ulid.Make().String(), UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: ulid.Make().String(),
		Filename: "card.jpg", ContentType: "image/jpeg", Size: int64(len(e.image)), SHA256: "00",
		Width: 150, Height: 103, BlobKey: key, CreatedAt: now, UpdatedAt: now,
	}
	e.store.put(a)
	job, err := wire.NewJob(context.Background(), a, now)
	if err != nil {
		e.t.Fatal(err)
	}
	job.Attempt, job.MaxAttempts = 1, maxAttempts
	return a, &job
}

// eventSchema compiles api/asset-processed-event.schema.json.
func eventSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	sch, err := c.Compile("../../api/asset-processed-event.schema.json")
	if err != nil {
		t.Fatalf("compile the event schema: %v", err)
	}
	return sch
}

// checkEvent validates an event against the schema and against the asset
// whose final state it announces, and returns it decoded.
func checkEvent(t *testing.T, s sent, a *asset.Asset) pipeline.Event {
	t.Helper()
	if s.UserID != a.UserID || s.Event != "asset_processed" {
		t.Errorf("event sent to user %q as %q; want %q, asset_processed", s.UserID, s.Event, a.UserID)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(s.Data))
	if err != nil {
		t.Fatal(err)
	}
	if err := eventSchema(t).Validate(v); err != nil {
		t.Errorf("event does not match api/asset-processed-event.schema.json: %v\n%s", err, s.Data)
	}
	var ev pipeline.Event
	if err := json.Unmarshal(s.Data, &ev); err != nil {
		t.Fatal(err)
	}
	wantStatus := map[asset.Status]string{asset.StatusDraft: "completed", asset.StatusFailed: "failed"}[a.Status]
	if ev.EventID != a.EventID || ev.AssetID != a.ID || ev.JobID != a.ProcessingJobID || ev.UserID != a.UserID ||
		ev.Status != wantStatus || ev.Attempts != a.Attempts {
		t.Errorf("event %s\ndoes not match the asset %+v", s.Data, a)
	}
	if a.ProcessedAt == nil || ev.ProcessedAt != a.ProcessedAt.UTC().Format("2006-01-02T15:04:05.000Z07:00") {
		t.Errorf("event processedAt %q, asset processedAt %v", ev.ProcessedAt, a.ProcessedAt)
	}
	return ev
}

// deadJobs is a fake of the queue's dead-job listing.
type deadJobs struct {
	infos []queue.Info
	err   error
}

func (d *deadJobs) List(_ context.Context, state queue.State, limit int) ([]queue.Info, error) {
	if d.err != nil {
		return nil, d.err
	}
	var out []queue.Info
	for _, i := range d.infos {
		if i.State == state && len(out) < limit {
			out = append(out, i)
		}
	}
	return out, nil
}
