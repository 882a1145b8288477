package httpapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/idempotency/sqlitekeys"
	"github.com/klectr/klectr/internal/intake/sqliteintake"
	"github.com/klectr/klectr/internal/queue/riverqueue"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// keyedEnv is an API server on the embedded shape's real intake (SQLite
// file: assets, queue and idempotency records), with a clock the test
// moves.
type keyedEnv struct {
	*env
	store *sqlitestore.Store
	clock *atomic.Pointer[time.Time]
}

func newKeyedEnv(t *testing.T) *keyedEnv {
	t.Helper()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := sqlitestore.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	q, err := riverqueue.New(ctx, db, riverqueue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := sqlitekeys.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	in := sqliteintake.New(db, st, q, keys, func() string { return ulid.Make().String() })
	t.Cleanup(in.Close)
	clock := new(atomic.Pointer[time.Time])
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
	clock.Store(&t0)
	e := newEnv(t, func(d *httpapi.Deps) {
		d.Intake, d.Assets = in, st
		d.Now = func() time.Time { return *clock.Load() }
	})
	return &keyedEnv{env: e, store: st, clock: clock}
}

func (k *keyedEnv) advance(d time.Duration) {
	t := k.clock.Load().Add(d)
	k.clock.Store(&t)
}

func (k *keyedEnv) assetsOf(t *testing.T, user string) []*asset.Asset {
	t.Helper()
	p, err := k.store.List(context.Background(), user, asset.ListQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return p.Assets
}

func oneFile(t *testing.T, rel, name string) []byte {
	return multipartBody(t, false, filePart(name, fixture(t, rel)))
}

// The same key and body, quoted (sf-string) or bare: the first 202's body
// again, byte for byte, marked Idempotent-Replayed; nothing created — no
// asset, no job, no blob kept.
func TestUploadKeyRepeatReplays(t *testing.T) {
	t.Parallel()
	k := newKeyedEnv(t)
	tok := k.token(t, "u1", "")
	fx := validFixtures(t)
	body := multipartBody(t, false, filePart("a.jpg", fixture(t, fx[0])), filePart("b.jpg", fixture(t, fx[1])))
	const key = "8e03978e-40d5-43e8-bc93-6894a57f9324"

	first := k.keyedUpload(t, tok, `"`+key+`"`, body)
	if first.StatusCode != http.StatusAccepted || first.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: %d %s %v", first.StatusCode, first.Body, first.Header)
	}
	blobs := k.blobFiles(t)
	for _, hdr := range []string{key, `"` + key + `"`} {
		k.advance(time.Hour)
		again := k.keyedUpload(t, tok, hdr, body)
		if again.StatusCode != http.StatusAccepted || !bytes.Equal(again.Body, first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("repeat with %s: %d %s, want the first 202 %s replayed", hdr, again.StatusCode, again.Body, first.Body)
		}
	}
	if n := len(k.assetsOf(t, "u1")); n != 2 {
		t.Fatalf("%d assets, want the first request's 2", n)
	}
	if got := k.blobFiles(t); len(got) != len(blobs) {
		t.Fatalf("blobs %v after the repeats, want the first request's %v", got, blobs)
	}
	if strings.Contains(k.logs.String(), key) {
		t.Fatal("the logs hold the idempotency key")
	}
}

// The same key with another body — other bytes, another file name, another
// order — gets 422 idempotency_key_reused and creates nothing; the first
// body still gets its 202.
func TestUploadKeyReusedWithAnotherBody(t *testing.T) {
	t.Parallel()
	k := newKeyedEnv(t)
	tok := k.token(t, "u1", "")
	fx := validFixtures(t)
	a, b := fixture(t, fx[0]), fixture(t, fx[1])
	body := multipartBody(t, false, filePart("a.jpg", a), filePart("b.jpg", b))
	first := k.keyedUpload(t, tok, "k1", body)
	if first.StatusCode != http.StatusAccepted {
		t.Fatalf("first: %d %s", first.StatusCode, first.Body)
	}
	for name, other := range map[string][]byte{
		"bytes": multipartBody(t, false, filePart("a.jpg", a), filePart("b.jpg", a)),
		"name":  multipartBody(t, false, filePart("a.jpg", a), filePart("c.jpg", b)),
		"order": multipartBody(t, false, filePart("b.jpg", b), filePart("a.jpg", a)),
		"count": multipartBody(t, false, filePart("a.jpg", a)),
	} {
		r := k.keyedUpload(t, tok, "k1", other)
		if e := r.wantError(t, http.StatusUnprocessableEntity, "idempotency_key_reused"); e.Error.Message == "" {
			t.Errorf("%s: empty message", name)
		}
	}
	if n := len(k.assetsOf(t, "u1")); n != 2 {
		t.Fatalf("%d assets, want 2", n)
	}
	if got := k.blobFiles(t); len(got) != 2 {
		t.Fatalf("blobs %v, want the first request's 2", got)
	}
	if r := k.keyedUpload(t, tok, "k1", body); !bytes.Equal(r.Body, first.Body) {
		t.Fatalf("the first body after the refusals: %d %s", r.StatusCode, r.Body)
	}
}

// Many requests with one key at once: one creates the assets; every other
// gets the same 202 (a replay) or 409 conflict with Retry-After (it came
// while the first was in flight). Retrying a 409 gets the 202.
func TestUploadKeyConcurrentDuplicatesCreateOnce(t *testing.T) {
	t.Parallel()
	k := newKeyedEnv(t)
	tok := k.token(t, "u1", "")
	body := oneFile(t, validFixtures(t)[0], "a.jpg")
	const n = 16
	type result struct {
		status      int
		body        []byte
		retryAfter  string
		replayed    bool
		transportOK bool
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			req, _ := http.NewRequest(http.MethodPost, k.srv.URL+"/api/assets/analyze-queue", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", multipartType)
			req.Header.Set("Idempotency-Key", "storm")
			res, err := k.srv.Client().Do(req)
			if err != nil {
				return
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			results[i] = result{res.StatusCode, b, res.Header.Get("Retry-After"), res.Header.Get("Idempotent-Replayed") == "true", true}
		})
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the requests did not finish in 60 s")
	}
	var created, replayed, conflicts int
	var accepted []byte
	for i, r := range results {
		switch {
		case !r.transportOK:
			t.Fatalf("request %d failed in transport", i)
		case r.status == http.StatusAccepted:
			if accepted != nil && !bytes.Equal(accepted, r.body) {
				t.Fatalf("two different 202 bodies: %s and %s", accepted, r.body)
			}
			accepted = r.body
			if r.replayed {
				replayed++
			} else {
				created++
			}
		case r.status == http.StatusConflict && r.retryAfter == "1" && strings.Contains(string(r.body), `"code":"conflict"`):
			conflicts++
		default:
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	t.Logf("%d requests with one key: %d created, %d replayed, %d conflicts", n, created, replayed, conflicts)
	if created != 1 {
		t.Fatalf("%d requests created assets, want 1", created)
	}
	if got := len(k.assetsOf(t, "u1")); got != 1 {
		t.Fatalf("%d assets, want 1", got)
	}
	if got := k.blobFiles(t); len(got) != 1 {
		t.Fatalf("blobs %v, want 1", got)
	}
	if r := k.keyedUpload(t, tok, "storm", body); !bytes.Equal(r.Body, accepted) {
		t.Fatalf("a retry after the storm: %d %s", r.StatusCode, r.Body)
	}
}

// A key is kept for 24 h: until then it replays, from then on it is free
// and the same request creates new assets.
func TestUploadKeyExpires(t *testing.T) {
	t.Parallel()
	k := newKeyedEnv(t)
	tok := k.token(t, "u1", "")
	body := oneFile(t, validFixtures(t)[0], "a.jpg")
	first := k.keyedUpload(t, tok, "k1", body)
	k.advance(idempotency.TTL - time.Millisecond)
	if r := k.keyedUpload(t, tok, "k1", body); !bytes.Equal(r.Body, first.Body) {
		t.Fatalf("just before 24 h: %d %s, want the replay", r.StatusCode, r.Body)
	}
	k.advance(time.Millisecond)
	r := k.keyedUpload(t, tok, "k1", body)
	if r.StatusCode != http.StatusAccepted || bytes.Equal(r.Body, first.Body) || r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("after 24 h: %d %s, want a new 202", r.StatusCode, r.Body)
	}
	if n := len(k.assetsOf(t, "u1")); n != 2 {
		t.Fatalf("%d assets, want 2", n)
	}
}

// A refused upload keeps nothing under its key: once fixed, the same key
// goes through as a first request.
func TestUploadKeyRefusedUploadKeepsNothing(t *testing.T) {
	t.Parallel()
	k := newKeyedEnv(t)
	tok := k.token(t, "u1", "")
	fx := validFixtures(t)
	bad := multipartBody(t, false, filePart("a.jpg", fixture(t, fx[0])), filePart("bomb.png", fixture(t, "invalid/bomb-30000x30000.png")))
	r := k.keyedUpload(t, tok, "k1", bad)
	r.wantFileError(t, http.StatusUnprocessableEntity, "invalid_image", 1)
	if n := len(k.assetsOf(t, "u1")); n != 0 {
		t.Fatalf("%d assets after a refusal", n)
	}
	good := oneFile(t, fx[0], "a.jpg")
	r = k.keyedUpload(t, tok, "k1", good)
	if r.StatusCode != http.StatusAccepted || r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("the fixed request: %d %s", r.StatusCode, r.Body)
	}
	if again := k.keyedUpload(t, tok, "k1", good); !bytes.Equal(again.Body, r.Body) {
		t.Fatalf("its repeat: %d %s", again.StatusCode, again.Body)
	}
}

// A key belongs to its user: another user's same key and body is a first
// request, and neither gets the other's response.
func TestUploadKeyIsPerUser(t *testing.T) {
	t.Parallel()
	k := newKeyedEnv(t)
	body := oneFile(t, validFixtures(t)[0], "a.jpg")
	r1 := k.keyedUpload(t, k.token(t, "u1", ""), "shared", body)
	r2 := k.keyedUpload(t, k.token(t, "u2", ""), "shared", body)
	if r1.StatusCode != http.StatusAccepted || r2.StatusCode != http.StatusAccepted || bytes.Equal(r1.Body, r2.Body) ||
		r2.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("u1 %d %s; u2 %d %s", r1.StatusCode, r1.Body, r2.StatusCode, r2.Body)
	}
	if again := k.keyedUpload(t, k.token(t, "u1", ""), "shared", body); !bytes.Equal(again.Body, r1.Body) {
		t.Fatalf("u1's repeat: %s, want %s", again.Body, r1.Body)
	}
	if len(k.assetsOf(t, "u1")) != 1 || len(k.assetsOf(t, "u2")) != 1 {
		t.Fatal("want one asset each")
	}
}

// An invalid Idempotency-Key is refused before the body is read (400
// bad_request, field Idempotency-Key), without echoing it; so are two.
func TestUploadKeyHeaderIsValidated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tok := e.token(t, "u1", "")
	body := oneFile(t, validFixtures(t)[0], "a.jpg")
	for _, v := range []string{`""`, strings.Repeat("x", 256), `"unclosed`, "two words", "a,b", "caf\u00e9", `"\x"`} {
		req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", tok, bytes.NewReader(body))
		req.Header.Set("Content-Type", multipartType)
		req.Header.Set("Idempotency-Key", v)
		r := e.do(t, req)
		eb := r.wantError(t, http.StatusBadRequest, "bad_request")
		if eb.Error.Field != "Idempotency-Key" || (len(v) > 3 && strings.Contains(eb.Error.Message, v)) {
			t.Errorf("%q: %+v", v, eb.Error)
		}
	}
	req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", tok, bytes.NewReader(body))
	req.Header.Set("Content-Type", multipartType)
	req.Header.Add("Idempotency-Key", "a")
	req.Header.Add("Idempotency-Key", "b")
	e.do(t, req).wantError(t, http.StatusBadRequest, "bad_request")
	e.wantNothingKept(t)

	req = e.request(t, http.MethodPost, "/api/assets/analyze-queue", tok, bytes.NewReader(body))
	req.Header.Set("Content-Type", multipartType)
	req.Header.Set("Idempotency-Key", strings.Repeat("x", 255))
	if r := e.do(t, req); r.StatusCode != http.StatusAccepted {
		t.Fatalf("a 255-byte key: %d %s", r.StatusCode, r.Body)
	}
}

// What the intake answers becomes the contract's replies: in flight → 409
// conflict with Retry-After, another body → 422 idempotency_key_reused, a
// failure → 503; each removes the request's blobs. The claim carries the
// user, the unquoted key, the request's time and the 202 body.
func TestUploadKeyIntakeAnswers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tok := e.token(t, "u1", "")
	body := oneFile(t, validFixtures(t)[0], "a.jpg")
	var got idempotency.Claim
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{idempotency.ErrInFlight, http.StatusConflict, "conflict"},
		{idempotency.ErrReused, http.StatusUnprocessableEntity, "idempotency_key_reused"},
		{io.ErrUnexpectedEOF, http.StatusServiceUnavailable, "unavailable"},
	} {
		e.intake.mu.Lock()
		e.intake.once = func(_ context.Context, _ []*asset.Asset, c idempotency.Claim) (*idempotency.Record, error) {
			got = c
			return nil, tc.err
		}
		e.intake.mu.Unlock()
		req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", tok, bytes.NewReader(body))
		req.Header.Set("Content-Type", multipartType)
		req.Header.Set("Idempotency-Key", `"k \"1\""`)
		r := e.do(t, req)
		r.wantError(t, tc.status, tc.code)
		if tc.status == http.StatusConflict && r.Header.Get("Retry-After") != "1" {
			t.Errorf("409 without Retry-After: %v", r.Header)
		}
		if got.UserID != "u1" || got.Key != `k "1"` || !got.At.Equal(e.now) || !strings.HasPrefix(string(got.Response), `{"assets":[`) || len(got.Fingerprint) != 64 {
			t.Errorf("claim %+v", got)
		}
		if f := e.blobFiles(t); len(f) > 0 {
			t.Errorf("%s left blobs %v", tc.code, f)
		}
	}
}
