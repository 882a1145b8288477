package assettest

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// testCreateRoundTrip stores assets covering every field in both of its
// shapes (nil and set, empty and non-empty) and reads them back through Get
// and List.
func testCreateRoundTrip(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	ist := time.FixedZone("IST", 5*3600+1800)

	bare := newAsset("rt-bare", "u1", t0)

	full := newAsset("rt-full", "u1", t0.Add(time.Second).In(ist))
	full.Status = asset.StatusFailed
	full.Filename = `carte "été" 日本.JPG`
	full.ContentType = "image/heic"
	full.Size = 10 << 20
	full.Width, full.Height = 1, 65535
	full.AIMetadata = json.RawMessage(`{"provider":"builtin","verdict":"too_blurry","colors":["#aabbcc","#000000"],"sharpness":0.25,"nested":{"list":[1,2,3],"flag":true,"none":null}}`)
	full.Error = &asset.Error{Code: "ai_unavailable", Message: "the AI service answered 503"}
	full.Attempts = 4
	full.UpdatedAt = t0.Add(3 * time.Second).In(ist)
	processed := t0.Add(2 * time.Second).In(ist)
	full.ProcessedAt = &processed
	full.EventID = "evt-rt-full"
	full.EventPending = true

	// Set but empty must not come back as nil.
	empty := newAsset("rt-empty", "u1", t0.Add(2*time.Second))
	empty.Status = asset.StatusDraft
	empty.AIMetadata = json.RawMessage(`{}`)
	empty.Error = &asset.Error{}
	zero := t0.Add(2 * time.Second)
	empty.ProcessedAt = &zero

	want := []*asset.Asset{bare, full, empty}
	mustCreate(t, s, bare.Clone(), full.Clone(), empty.Clone())
	for _, w := range want {
		assertAsset(t, "Get", mustGet(t, s, w.ID), w)
	}

	page, err := s.List(ctx, "u1", asset.ListQuery{Limit: 10})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	// Newest first: empty (t0+2s), full (t0+1s), bare (t0).
	wantOrder := []*asset.Asset{empty, full, bare}
	if len(page.Assets) != len(wantOrder) {
		t.Fatalf("List returned %v, want %v", ids(page.Assets), ids(wantOrder))
	}
	for i, w := range wantOrder {
		assertAsset(t, "List", page.Assets[i], w)
	}
}

func testCreateAllOrNone(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	first := newAsset("aon-1", "u1", t0)
	mustCreate(t, s, first.Clone())

	dup := newAsset("aon-1", "u2", t0.Add(time.Hour))
	dup.Filename = "other.png"
	err := s.Create(ctx,
		newAsset("aon-2", "u1", t0),
		dup,
		newAsset("aon-3", "u1", t0),
	)
	if !errors.Is(err, asset.ErrDuplicate) {
		t.Fatalf("Create with an existing id = %v, want asset.ErrDuplicate", err)
	}
	assertNotFound(t, s, "aon-2")
	assertNotFound(t, s, "aon-3")
	assertUnchanged(t, s, first)
}

func testCreateDuplicateInBatch(t *testing.T, s asset.Store) {
	t0 := baseTime()
	err := s.Create(context.Background(),
		newAsset("dib-1", "u1", t0),
		newAsset("dib-2", "u1", t0),
		newAsset("dib-1", "u1", t0.Add(time.Second)),
	)
	if !errors.Is(err, asset.ErrDuplicate) {
		t.Fatalf("Create with one id twice = %v, want asset.ErrDuplicate", err)
	}
	assertNotFound(t, s, "dib-1")
	assertNotFound(t, s, "dib-2")
}

func testCreateEmpty(t *testing.T, s asset.Store) {
	if err := s.Create(context.Background()); err != nil {
		t.Fatalf("Create() with no assets = %v, want nil", err)
	}
}

// testCreateCopiesValues: neither the asset given to Create nor the one
// returned by Get aliases what is stored (an in-memory store could).
func testCreateCopiesValues(t *testing.T, s asset.Store) {
	a := newAsset("copy-1", "u1", baseTime())
	a.AIMetadata = json.RawMessage(`{"k":"v"}`)
	a.Error = &asset.Error{Code: "c", Message: "m"}
	want := a.Clone()
	mustCreate(t, s, a)

	a.Filename = "changed"
	a.AIMetadata[2] = 'X'
	a.Error.Code = "changed"
	got := mustGet(t, s, "copy-1")
	assertAsset(t, "Get after the caller changed its asset", got, want)

	got.Status = asset.StatusDraft
	got.Error.Message = "changed"
	assertUnchanged(t, s, want)
}

func testGetNotFound(t *testing.T, s asset.Store) {
	assertNotFound(t, s, "no-such-asset")
	mustCreate(t, s, newAsset("nf-1", "u1", baseTime()))
	assertNotFound(t, s, "nf-2")
}

func ids(as []*asset.Asset) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.ID
	}
	return out
}
