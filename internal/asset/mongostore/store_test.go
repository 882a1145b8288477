package mongostore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/assettest"
	"github.com/klectr/klectr/internal/testenv"
)

// newStore connects to the test server with a database of t's own.
func newStore(tb testing.TB) *Store {
	tb.Helper()
	uri, db := testenv.MongoURI(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := New(ctx, Config{URI: uri, Database: db})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// capabilities are the server's, as New found them: FerretDB's guarded
// updates race, MongoDB's do not.
func (s *Store) capabilities() assettest.Capabilities {
	if s.server.ferretDB != "" {
		return assettest.Capabilities{Server: "FerretDB " + s.server.ferretDB}
	}
	return assettest.Every
}

func TestStore(t *testing.T) {
	t.Parallel()
	assettest.TestStoreWith(t, func(t *testing.T) (asset.Store, assettest.Capabilities) {
		s := newStore(t)
		return s, s.capabilities()
	})
}

func testAsset(id string) *asset.Asset {
	now := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	return &asset.Asset{
		ID: id, UserID: "u1", Status: asset.StatusProcessing, ProcessingJobID: "job-" + id,
		Filename: id + ".jpg", ContentType: "image/jpeg", Size: 1000, SHA256: strings.Repeat("0", 64),
		Width: 10, Height: 10, BlobKey: "blobs/" + id, CreatedAt: now, UpdatedAt: now,
	}
}

// TestDocumentShape: other readers of the collection (a Mongoose model of
// the original plan) see the JSON API's names and BSON types.
func TestDocumentShape(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	a := testAsset("shape-1")
	if err := s.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	raw, err := s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: a.ID}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bson.Type{
		"_id": bson.TypeString, "userId": bson.TypeString, "status": bson.TypeString,
		"processingJobId": bson.TypeString, "filename": bson.TypeString, "contentType": bson.TypeString,
		"size": bson.TypeInt64, "sha256": bson.TypeString, "blobKey": bson.TypeString,
		"aiMetadata": bson.TypeNull, "error": bson.TypeNull, "processedAt": bson.TypeNull,
		"createdAt": bson.TypeDateTime, "updatedAt": bson.TypeDateTime,
		"eventId": bson.TypeString, "eventPending": bson.TypeBoolean,
	}
	check := func(raw bson.Raw, want map[string]bson.Type) {
		t.Helper()
		elems, err := raw.Elements()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bson.Type{}
		for _, e := range elems {
			got[e.Key()] = e.Value().Type
		}
		for k, ty := range want {
			if got[k] != ty {
				t.Errorf("field %q has BSON type %v, want %v (document %s)", k, got[k], ty, raw)
			}
		}
		for _, k := range []string{"width", "height", "attempts"} {
			if !raw.Lookup(k).IsNumber() {
				t.Errorf("field %q is %v, want a number", k, raw.Lookup(k).Type)
			}
		}
	}
	check(raw, want)

	out := asset.Outcome{Status: asset.StatusFailed, AIMetadata: json.RawMessage(`{"exif.make":"Canon","$score":0.5}`),
		Error: &asset.Error{Code: "c", Message: "m"}, Attempts: 2, ProcessedAt: a.CreatedAt.Add(time.Second), EventID: "evt-1"}
	if _, err := s.Finish(ctx, a.ID, a.ProcessingJobID, out); err != nil {
		t.Fatal(err)
	}
	raw, err = s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: a.ID}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	want["aiMetadata"], want["error"], want["processedAt"] = bson.TypeEmbeddedDocument, bson.TypeEmbeddedDocument, bson.TypeDateTime
	check(raw, want)
	if got := raw.Lookup("aiMetadata", "exif%2Emake").StringValue(); got != "Canon" {
		t.Errorf("aiMetadata.exif%%2Emake = %q, want Canon", got)
	}
	if got := raw.Lookup("error", "code").StringValue(); got != "c" {
		t.Errorf("error.code = %q, want c", got)
	}
}

// TestMetadataThroughServer: the server keeps every stored form as is.
func TestMetadataThroughServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	for i, in := range roundTrips {
		a := testAsset(fmt.Sprintf("meta-%d", i))
		if err := s.Create(ctx, a); err != nil {
			t.Fatal(err)
		}
		out := asset.Outcome{Status: asset.StatusDraft, AIMetadata: json.RawMessage(in), Attempts: 1,
			ProcessedAt: a.CreatedAt.Add(time.Second), EventID: "evt-" + a.ID}
		if _, err := s.Finish(ctx, a.ID, a.ProcessingJobID, out); err != nil {
			t.Fatalf("Finish with %s: %v", in, err)
		}
		got, err := s.Get(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.AIMetadata) != in {
			t.Errorf("stored\n  %s\nread back\n  %s", in, got.AIMetadata)
		}
	}
}

// TestSizeLimit: MongoDB refuses documents over 16 MiB; the store does on
// every server, before sending them.
func TestSizeLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	big := testAsset("big-1")
	big.Filename = strings.Repeat("x", maxDocumentBytes)
	if err := s.Create(ctx, big, testAsset("big-2")); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("Create of a %d MiB document = %v, want an error naming the limit", maxDocumentBytes>>20, err)
	}
	for _, id := range []string{"big-1", "big-2"} {
		if _, err := s.Get(ctx, id); !errors.Is(err, asset.ErrNotFound) {
			t.Fatalf("Get(%s) after the refused Create = %v, want asset.ErrNotFound", id, err)
		}
	}

	a := testAsset("big-meta")
	if err := s.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	meta := json.RawMessage(`{"s":"` + strings.Repeat("y", maxMetadataBytes) + `"}`)
	out := asset.Outcome{Status: asset.StatusDraft, AIMetadata: meta, Attempts: 1, ProcessedAt: a.CreatedAt, EventID: "evt"}
	if _, err := s.Finish(ctx, a.ID, a.ProcessingJobID, out); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("Finish with %d MiB of metadata = %v, want an error naming the limit", len(meta)>>20, err)
	}
	if got, err := s.Get(ctx, a.ID); err != nil || got.Status != asset.StatusProcessing {
		t.Fatalf("after the refused Finish: %+v, %v; want the asset still processing", got, err)
	}
}

// TestIndexes: New creates an index for every query, and a second New on
// the same collection (every process start) keeps them and the data.
func TestIndexes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	uri, db := testenv.MongoURI(t)
	s, err := New(ctx, Config{URI: uri, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if err := s.Create(ctx, testAsset("keep")); err != nil {
		t.Fatal(err)
	}
	s2, err := New(ctx, Config{URI: uri, Database: db})
	if err != nil {
		t.Fatalf("second New: %v", err)
	}
	defer s2.Close(ctx)
	if _, err := s2.Get(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	cur, err := s2.coll.Indexes().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var list []struct {
		Name string `bson:"name"`
		Key  bson.D `bson:"key"`
	}
	if err := cur.All(ctx, &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]bson.D{}
	for _, ix := range list {
		got[ix.Name] = ix.Key
	}
	for _, want := range indexes {
		keys, ok := got[want.name]
		if !ok {
			t.Errorf("index %s missing; the collection has %v", want.name, got)
			continue
		}
		if k := fmt.Sprint(keys); k != fmt.Sprint(want.keys) {
			t.Errorf("index %s has keys %s, want %s", want.name, k, fmt.Sprint(want.keys))
		}
	}
}

func TestDatabaseFromURI(t *testing.T) {
	t.Parallel()
	uri, db := testenv.MongoURI(t)
	u := strings.TrimSuffix(uri, "/") + "/" + db
	s, err := New(context.Background(), Config{URI: u})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if got := s.coll.Database().Name(); got != db {
		t.Errorf("database %q, want %q from the URI path", got, db)
	}
	if got := s.coll.Name(); got != DefaultCollection {
		t.Errorf("collection %q, want %q", got, DefaultCollection)
	}
}

// TestNewFailsFast: an unreachable server stops start-up with its address,
// within ctx.
func TestNewFailsFast(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err = New(ctx, Config{URI: "mongodb://user:secret@" + addr + "/"})
	if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("New on a closed port = %v, want an error naming %s as unreachable", err, addr)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("the error shows the password: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("New took %s to fail", d)
	}
	if _, err := New(ctx, Config{URI: "http://example.com"}); err == nil {
		t.Error("New with a non-MongoDB URI succeeded")
	}
}

// The benchmarks run against the test server; on FerretDB every read is a
// sequential scan, so their figures depend on the collection's size
// (benchPreload assets).
const benchPreload = 1000

func benchStore(b *testing.B) (*Store, []*asset.Asset) {
	s := newStore(b)
	as := make([]*asset.Asset, benchPreload)
	for i := range as {
		as[i] = testAsset(fmt.Sprintf("pre-%06d", i))
	}
	if err := s.Create(context.Background(), as...); err != nil {
		b.Fatal(err)
	}
	return s, as
}

func BenchmarkCreate(b *testing.B) {
	ctx := context.Background()
	s, _ := benchStore(b)
	i := 0
	for b.Loop() {
		if err := s.Create(ctx, testAsset(fmt.Sprintf("bench-%09d", i))); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkGet(b *testing.B) {
	ctx := context.Background()
	s, as := benchStore(b)
	i := 0
	for b.Loop() {
		if _, err := s.Get(ctx, as[i%len(as)].ID); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkFinish(b *testing.B) {
	ctx := context.Background()
	s, as := benchStore(b)
	out := asset.Outcome{Status: asset.StatusDraft, AIMetadata: json.RawMessage(`{"provider":"builtin","verdict":"ok","colors":["#102030"]}`),
		Attempts: 1, ProcessedAt: as[0].CreatedAt, EventID: "evt"}
	i := 0
	for b.Loop() {
		if i == len(as) {
			b.Fatalf("more than %d Finish calls", len(as))
		}
		if _, err := s.Finish(ctx, as[i].ID, as[i].ProcessingJobID, out); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkFinishParallel: Finish from 16 goroutines, as many workers do.
func BenchmarkFinishParallel(b *testing.B) {
	ctx := context.Background()
	s, as := benchStore(b)
	out := asset.Outcome{Status: asset.StatusDraft, Attempts: 1, ProcessedAt: as[0].CreatedAt, EventID: "evt"}
	var next atomic.Int64
	b.SetParallelism(8) // × GOMAXPROCS 2
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)-1) % len(as)
			_, err := s.Finish(ctx, as[i].ID, as[i].ProcessingJobID, out)
			if err != nil && !errors.Is(err, asset.ErrConflict) {
				b.Error(err)
				return
			}
		}
	})
}

// TestUndoKeepsOtherCalls: when a failed insert leaves the store unsure of
// what it wrote, Create deletes the batch by id and job id, so an asset
// another call stored under one of the ids stays.
func TestUndoKeepsOtherCalls(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	s := newStore(t)
	mine, theirs := testAsset("undo-1"), testAsset("undo-2")
	if err := s.Create(ctx, mine, theirs); err != nil {
		t.Fatal(err)
	}
	sameID := testAsset("undo-2")
	sameID.ProcessingJobID = "job-of-this-call"
	cancel() // the undo runs even when the caller has gone
	if err := s.undo(ctx, []*asset.Asset{mine, sameID}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(context.Background(), mine.ID); !errors.Is(err, asset.ErrNotFound) {
		t.Errorf("Get(%s) after undo = %v, want asset.ErrNotFound", mine.ID, err)
	}
	if _, err := s.Get(context.Background(), theirs.ID); err != nil {
		t.Errorf("Get(%s), stored by another call, after undo: %v", theirs.ID, err)
	}
}
