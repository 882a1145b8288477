package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
)

// newAsset is a stored asset of user in status st; draft and failed ones
// carry their outcome.
func newAsset(user string, st asset.Status, at time.Time) *asset.Asset {
	a := &asset.Asset{
		ID: ulid.Make().String(), UserID: user, Status: st, ProcessingJobID: ulid.Make().String(),
		Filename: "card.jpg", ContentType: "image/jpeg", Size: 123456,
		SHA256: strings.Repeat("ab", 32), Width: 4032, Height: 3024,
		BlobKey: strings.Repeat("0f", 16), Attempts: 1, CreatedAt: at, UpdatedAt: at.Add(time.Second),
	}
	received, enqueued, started := at.Add(-50*time.Millisecond), at, at.Add(time.Second)
	a.ReceivedAt, a.EnqueuedAt, a.StartedAt = &received, &enqueued, &started
	analyzed, done, sent := at.Add(1900*time.Millisecond), at.Add(2*time.Second), at.Add(2100*time.Millisecond)
	switch st {
	case asset.StatusDraft:
		a.AIMetadata = json.RawMessage(`{"provider":"builtin","width":4032}`)
		a.ProcessedAt, a.AnalyzedAt, a.EventSentAt = &done, &analyzed, &sent
	case asset.StatusFailed:
		a.Error = &asset.Error{Code: "ai_rejected", Message: "the AI service refused the image"}
		a.Attempts = 4
		a.ProcessedAt, a.AnalyzedAt = &done, &analyzed // its event not sent yet: null
	}
	return a
}

// assetBody is GET /api/assets/{id}'s body, decoded strictly.
type assetBody struct {
	ID              string          `json:"id"`
	UserID          string          `json:"userId"`
	Status          string          `json:"status"`
	ProcessingJobID string          `json:"processingJobId"`
	Filename        string          `json:"filename"`
	ContentType     string          `json:"contentType"`
	Size            int64           `json:"size"`
	SHA256          string          `json:"sha256"`
	Width           int             `json:"width"`
	Height          int             `json:"height"`
	AIMetadata      json.RawMessage `json:"aiMetadata"`
	Error           *asset.Error    `json:"error"`
	Attempts        int             `json:"attempts"`
	CreatedAt       string          `json:"createdAt"`
	UpdatedAt       string          `json:"updatedAt"`
	ProcessedAt     *string         `json:"processedAt"`
	ReceivedAt      *string         `json:"receivedAt"`
	EnqueuedAt      *string         `json:"enqueuedAt"`
	StartedAt       *string         `json:"startedAt"`
	AnalyzedAt      *string         `json:"analyzedAt"`
	EventSentAt     *string         `json:"eventSentAt"`
}

func decodeStrict(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("body %s: %v", b, err)
	}
}

// wantAsset checks that got shows a exactly, times in RFC 3339 UTC.
func wantAsset(t *testing.T, got assetBody, a *asset.Asset) {
	t.Helper()
	ts := func(x time.Time) string { return x.UTC().Format(time.RFC3339Nano) }
	parse := func(s string) string {
		p, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Errorf("time %q: %v", s, err)
		}
		return ts(p)
	}
	if got.ID != a.ID || got.UserID != a.UserID || got.Status != string(a.Status) || got.ProcessingJobID != a.ProcessingJobID ||
		got.Filename != a.Filename || got.ContentType != a.ContentType || got.Size != a.Size || got.SHA256 != a.SHA256 ||
		got.Width != a.Width || got.Height != a.Height || got.Attempts != a.Attempts ||
		parse(got.CreatedAt) != ts(a.CreatedAt) || parse(got.UpdatedAt) != ts(a.UpdatedAt) {
		t.Errorf("asset body %+v does not show %+v", got, *a)
	}
	switch {
	case a.AIMetadata == nil && string(got.AIMetadata) != "null":
		t.Errorf("aiMetadata %s, want null", got.AIMetadata)
	case a.AIMetadata != nil && !jsonEqual(t, got.AIMetadata, a.AIMetadata):
		t.Errorf("aiMetadata %s, want %s", got.AIMetadata, a.AIMetadata)
	}
	if (a.Error == nil) != (got.Error == nil) || (a.Error != nil && *a.Error != *got.Error) {
		t.Errorf("error %+v, want %+v", got.Error, a.Error)
	}
	for _, f := range []struct {
		name string
		got  *string
		want *time.Time
	}{
		{"processedAt", got.ProcessedAt, a.ProcessedAt}, {"receivedAt", got.ReceivedAt, a.ReceivedAt},
		{"enqueuedAt", got.EnqueuedAt, a.EnqueuedAt}, {"startedAt", got.StartedAt, a.StartedAt},
		{"analyzedAt", got.AnalyzedAt, a.AnalyzedAt}, {"eventSentAt", got.EventSentAt, a.EventSentAt},
	} {
		if (f.want == nil) != (f.got == nil) || (f.want != nil && parse(*f.got) != ts(*f.want)) {
			t.Errorf("%s %v, want %v", f.name, f.got, f.want)
		}
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

func TestGetAsset(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 4, 5, 6, 7, 890_000_000, time.UTC)
	for _, st := range []asset.Status{asset.StatusProcessing, asset.StatusDraft, asset.StatusFailed} {
		t.Run(string(st), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			a := newAsset("u1", st, at)
			e.assets.put(a)
			r := e.get(t, "/api/assets/"+a.ID, e.token(t, "u1", ""))
			if r.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", r.StatusCode, r.Body)
			}
			var got assetBody
			decodeStrict(t, r.Body, &got)
			wantAsset(t, got, a)
			if strings.Contains(string(r.Body), a.BlobKey) {
				t.Errorf("the reply reveals the blob key: %s", r.Body)
			}
		})
	}
}

// TestAssetNotFound: an unknown id and another user's asset get the same
// 404 — never 403 — on every route that takes an asset id.
func TestAssetNotFound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := newAsset("someone-else", asset.StatusFailed, time.Now())
	e.assets.put(other)
	tok := e.token(t, "u1", "")
	for _, id := range []string{other.ID, ulid.Make().String(), "not-even-an-id"} {
		for _, method := range []string{"GET", "POST"} {
			path := "/api/assets/" + id
			if method == "POST" {
				path += "/retry"
			}
			r := e.do(t, e.request(t, method, path, tok, nil))
			b := r.wantError(t, http.StatusNotFound, "not_found")
			if b.Error.Field != "" || b.Error.Index != nil {
				t.Errorf("%s %s: %s", method, path, r.Body)
			}
			if strings.Contains(string(r.Body), "someone-else") {
				t.Errorf("the 404 names the owner: %s", r.Body)
			}
		}
	}
	if e.intake.calls() > 0 {
		t.Errorf("retry of a foreign or missing asset reached the intake")
	}
}

func TestGetAssetStoreDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.assets.set(func(f *fakeAssets) { f.getErr = errors.New("connection refused") })
	e.get(t, "/api/assets/"+ulid.Make().String(), e.token(t, "u1", "")).wantError(t, 503, "unavailable")
}

// listBody is GET /api/assets's body, decoded strictly.
type listBody struct {
	Assets     []assetBody `json:"assets"`
	NextCursor *string     `json:"nextCursor"`
}

func TestListAssets(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

	t.Run("defaults and shape", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		a, b := newAsset("u1", asset.StatusDraft, at), newAsset("u1", asset.StatusProcessing, at.Add(-time.Hour))
		e.assets.put(b)
		e.assets.put(a)
		e.assets.put(newAsset("u2", asset.StatusDraft, at.Add(time.Hour)))
		r := e.get(t, "/api/assets", e.token(t, "u1", ""))
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", r.StatusCode, r.Body)
		}
		var got listBody
		decodeStrict(t, r.Body, &got)
		if len(got.Assets) != 2 || got.NextCursor != nil || !strings.Contains(string(r.Body), `"nextCursor":null`) {
			t.Fatalf("body %s: want 2 assets and nextCursor null", r.Body)
		}
		wantAsset(t, got.Assets[0], a)
		wantAsset(t, got.Assets[1], b)
		calls := e.assets.listCalls()
		if len(calls) != 1 || calls[0] != (listCall{"u1", asset.ListQuery{Limit: 20}}) {
			t.Errorf("List calls %+v, want one for u1 with limit 20", calls)
		}
	})
	t.Run("empty page is an empty array", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		r := e.get(t, "/api/assets", e.token(t, "u1", ""))
		if string(bytes.TrimSpace(r.Body)) != `{"assets":[],"nextCursor":null}` {
			t.Errorf("body %s", r.Body)
		}
	})
	t.Run("next cursor", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		newer, older := newAsset("u1", asset.StatusFailed, at), newAsset("u1", asset.StatusDraft, at.Add(-time.Minute))
		e.assets.put(newer)
		e.assets.put(older)
		var first, second listBody
		decodeStrict(t, e.get(t, "/api/assets?limit=1", e.token(t, "u1", "")).Body, &first)
		if len(first.Assets) != 1 || first.Assets[0].ID != newer.ID || first.NextCursor == nil {
			t.Fatalf("first page %+v: want the newer asset and a cursor", first)
		}
		decodeStrict(t, e.get(t, "/api/assets?limit=1&cursor="+url.QueryEscape(*first.NextCursor), e.token(t, "u1", "")).Body, &second)
		if len(second.Assets) != 1 || second.Assets[0].ID != older.ID || second.NextCursor != nil {
			t.Errorf("second page %+v: want the older asset and no cursor", second)
		}
	})
	// Against a store that honours the query, the reply shows only the
	// caller's assets of the asked status: checked on what comes back, not
	// only on what the store was asked.
	t.Run("only the caller's assets of the asked status", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		mine := map[asset.Status]*asset.Asset{}
		for i, st := range []asset.Status{asset.StatusProcessing, asset.StatusDraft, asset.StatusFailed} {
			mine[st] = newAsset("u1", st, at.Add(time.Duration(i)*time.Minute))
			e.assets.put(mine[st])
			e.assets.put(newAsset("u2", st, at.Add(time.Duration(i)*time.Minute)))
		}
		for _, st := range []asset.Status{asset.StatusProcessing, asset.StatusDraft, asset.StatusFailed} {
			var got listBody
			decodeStrict(t, e.get(t, "/api/assets?status="+string(st), e.token(t, "u1", "")).Body, &got)
			if len(got.Assets) != 1 {
				t.Fatalf("status=%s: %d assets, want u1's one", st, len(got.Assets))
			}
			wantAsset(t, got.Assets[0], mine[st])
		}
		var all listBody
		decodeStrict(t, e.get(t, "/api/assets", e.token(t, "u1", "")).Body, &all)
		if len(all.Assets) != 3 {
			t.Fatalf("%d assets, want u1's 3", len(all.Assets))
		}
		for _, a := range all.Assets {
			if a.UserID != "u1" {
				t.Errorf("u1's list shows %s's asset %s", a.UserID, a.ID)
			}
		}
	})

	valid := []struct {
		query string
		want  asset.ListQuery
	}{
		{"limit=1", asset.ListQuery{Limit: 1}},
		{"limit=100", asset.ListQuery{Limit: 100}},
		{"status=processing", asset.ListQuery{Limit: 20, Status: asset.StatusProcessing}},
		{"status=draft&limit=5", asset.ListQuery{Limit: 5, Status: asset.StatusDraft}},
		{"status=failed", asset.ListQuery{Limit: 20, Status: asset.StatusFailed}},
		{"cursor=fake-cursor:ID&limit=7", asset.ListQuery{Limit: 7, After: "fake-cursor:ID"}}, // ID: an asset's, issued by the fake
	}
	for _, c := range valid {
		t.Run(c.query, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			a := newAsset("u2", asset.StatusDraft, at)
			e.assets.put(a)
			query, want := strings.ReplaceAll(c.query, "ID", a.ID), c.want
			want.After = strings.ReplaceAll(want.After, "ID", a.ID)
			if r := e.get(t, "/api/assets?"+query, e.token(t, "u2", "")); r.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", r.StatusCode, r.Body)
			}
			if calls := e.assets.listCalls(); len(calls) != 1 || calls[0] != (listCall{"u2", want}) {
				t.Errorf("List calls %+v, want %+v", calls, c.want)
			}
		})
	}

	invalid := []string{"limit=0", "limit=101", "limit=-1", "limit=abc", "limit=1.5", "status=deleted", "status=DRAFT"}
	for _, q := range invalid {
		t.Run(q, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.get(t, "/api/assets?"+q, e.token(t, "u1", ""), doOptions{noRequestCheck: true}).wantError(t, 400, "bad_request")
			if calls := e.assets.listCalls(); len(calls) != 0 {
				t.Errorf("an invalid query reached the store: %+v", calls)
			}
		})
	}

	t.Run("cursor the store did not issue", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		b := e.get(t, "/api/assets?cursor=forged", e.token(t, "u1", "")).wantError(t, 400, "bad_request")
		if !strings.Contains(b.Error.Message, "cursor") {
			t.Errorf("message %q does not name the cursor", b.Error.Message)
		}
	})
	t.Run("store down", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.assets.set(func(f *fakeAssets) { f.err = errors.New("disk I/O error") })
		e.get(t, "/api/assets", e.token(t, "u1", "")).wantError(t, 503, "unavailable")
	})
}

func TestRetryAsset(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

	t.Run("failed goes back to processing under a new job", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		a := newAsset("u1", asset.StatusFailed, at)
		e.assets.put(a)
		r := e.do(t, e.request(t, "POST", "/api/assets/"+a.ID+"/retry", e.token(t, "u1", ""), nil))
		if r.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d: %s", r.StatusCode, r.Body)
		}
		var got assetBody
		decodeStrict(t, r.Body, &got)
		if got.ID != a.ID || got.Status != "processing" || got.ProcessingJobID == a.ProcessingJobID ||
			got.Error != nil || got.ProcessedAt != nil {
			t.Errorf("after retry: %+v", got)
		}
		if _, err := ulid.ParseStrict(got.ProcessingJobID); err != nil {
			t.Errorf("new job id %q: %v", got.ProcessingJobID, err)
		}
		if rs := e.intake.resubmitCalls(); len(rs) != 1 || rs[0] != a.ID+" "+got.ProcessingJobID {
			t.Errorf("Resubmit calls %v, want %s with the job id of the reply", rs, a.ID)
		}
		// The reply is the resubmitted asset as stored: the previous
		// attempts and outcome are gone, as a GET shows.
		if got.Attempts != 0 || string(got.AIMetadata) != "null" {
			t.Errorf("after retry: attempts %d, aiMetadata %s; want 0 and null", got.Attempts, got.AIMetadata)
		}
		stored, err := e.assets.Get(context.Background(), a.ID)
		if err != nil {
			t.Fatal(err)
		}
		wantAsset(t, got, stored)
		var fetched assetBody
		decodeStrict(t, e.get(t, "/api/assets/"+a.ID, e.token(t, "u1", "")).Body, &fetched)
		wantAsset(t, fetched, stored)
	})
	for _, st := range []asset.Status{asset.StatusProcessing, asset.StatusDraft} {
		t.Run(string(st)+" is a conflict", func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			a := newAsset("u1", st, at)
			e.assets.put(a)
			e.do(t, e.request(t, "POST", "/api/assets/"+a.ID+"/retry", e.token(t, "u1", ""), nil)).wantError(t, 409, "conflict")
			if e.intake.calls() > 0 {
				t.Errorf("a %s asset was resubmitted", st)
			}
		})
	}
	t.Run("lost race is a conflict", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		a := newAsset("u1", asset.StatusFailed, at)
		e.assets.put(a)
		e.intake.set(func(f *fakeIntake) { f.resubmitErr = asset.ErrConflict })
		e.do(t, e.request(t, "POST", "/api/assets/"+a.ID+"/retry", e.token(t, "u1", ""), nil)).wantError(t, 409, "conflict")
	})
	t.Run("intake down", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		a := newAsset("u1", asset.StatusFailed, at)
		e.assets.put(a)
		e.intake.set(func(f *fakeIntake) { f.resubmitErr = errors.New("queue unreachable") })
		e.do(t, e.request(t, "POST", "/api/assets/"+a.ID+"/retry", e.token(t, "u1", ""), nil)).wantError(t, 503, "unavailable")
	})
}

// TestHealth covers the unauthenticated probes.
func TestHealth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, p := range []string{"/healthz", "/readyz"} {
		r := e.get(t, p, "")
		if r.StatusCode != http.StatusOK {
			t.Errorf("%s: %d %s", p, r.StatusCode, r.Body)
		}
	}
}

// TestUnknownRoute: a path the API does not have is a 404 in the contract's
// error shape, not the mux's plain text.
func TestUnknownRoute(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.do(t, e.request(t, "GET", "/api/nothing-here", e.token(t, "u1", ""), nil), doOptions{noContract: true})
	r.wantError(t, http.StatusNotFound, "not_found")
}

// TestNotFoundDoesNotEchoALongID: the 404 quotes a short start of the id
// from the path, not all of it.
func TestNotFoundDoesNotEchoALongID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.get(t, "/api/assets/"+strings.Repeat("%FE", 20_000), e.token(t, "u1", ""), doOptions{noRequestCheck: true})
	b := r.wantError(t, 404, "not_found")
	if len(r.Body) > 1024 || !strings.HasPrefix(b.Error.Message, `no asset "\xfe`) {
		t.Errorf("a 404 of %d bytes: %.200s", len(r.Body), r.Body)
	}
}

// TestLegacyInvalidUTF8ResultIsServedValid: a result stored before results
// were validated may hold invalid UTF-8; the API serves it replaced, so that
// strict decoders (Swift's JSONDecoder, Python's) can read the page.
func TestLegacyInvalidUTF8ResultIsServedValid(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := newAsset("u1", asset.StatusDraft, time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))
	a.AIMetadata = json.RawMessage("{\"label\":\"Pok\xe9mon\"}")
	e.assets.put(a)
	for _, path := range []string{"/api/assets/" + a.ID, "/api/assets"} {
		r := e.get(t, path, e.token(t, "u1", ""))
		if r.StatusCode != http.StatusOK || !utf8.Valid(r.Body) || !strings.Contains(string(r.Body), "Pok\uFFFDmon") {
			t.Errorf("GET %s: %d %q; want 200, valid UTF-8, the bad byte replaced", path, r.StatusCode, r.Body)
		}
	}
}
