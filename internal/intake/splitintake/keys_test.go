package splitintake_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/mongostore"
	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/idempotency/idempotencytest"
	"github.com/klectr/klectr/internal/idempotency/mongokeys"
	"github.com/klectr/klectr/internal/intake/splitintake"
	"github.com/klectr/klectr/internal/testenv"
)

// newKeys returns the entries on the MongoDB-wire server of
// KLECTR_TEST_MONGODB_URI (FerretDB in CI), in a database of t's own.
func newKeys(t *testing.T) *mongokeys.Keys {
	t.Helper()
	uri, name := testenv.MongoURI(t)
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(context.Background()) })
	k, err := mongokeys.New(context.Background(), c.Database(name))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (s *memStore) count(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.byID {
		if a.UserID == user {
			n++
		}
	}
	return n
}

type keyedEnv struct {
	store  *memStore
	queue  *memQueue
	keys   *mongokeys.Keys
	intake *splitintake.Intake
}

func newKeyedEnv(t *testing.T) *keyedEnv {
	e := &keyedEnv{store: newMemStore(), queue: newMemQueue(), keys: newKeys(t)}
	e.intake = splitintake.New(e.store, e.queue, e.keys, func() string { return ulid.Make().String() }, discard())
	return e
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(new(bytes.Buffer), nil)) }

// The scale-out shape's keyed intake passes the conformance suite with its
// entries on a real MongoDB-wire server (the asset store and queue are in
// memory: the entries are what this suite is about).
func TestSubmitOnce(t *testing.T) {
	t.Parallel()
	idempotencytest.TestSubmitter(t, func(t *testing.T) idempotencytest.Env {
		e := newKeyedEnv(t)
		return idempotencytest.Env{Submitter: e.intake, Assets: func(_ context.Context, user string) (int, error) {
			return e.store.count(user), nil
		}}
	})
}

func keyedClaim(body string, at time.Time) idempotency.Claim {
	fp := idempotency.Fingerprint("u1", []idempotency.File{{Name: body, Size: 1, SHA256: "00"}})
	return idempotency.Claim{UserID: "u1", Key: "k1", Fingerprint: fp, Response: []byte(`{"b":"` + body + `"}`), At: at}
}

// While a request of the key is writing, another with the same body gets
// ErrInFlight (409) and one with another body ErrReused (422), on any node:
// the entry is in the shared collection.
func TestSubmitOnceInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newKeyedEnv(t)
	other := splitintake.New(e.store, e.queue, e.keys, func() string { return ulid.Make().String() }, discard())
	gate, entered := make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.store.mu.Lock()
	e.store.onCreate = func(ctx context.Context) error {
		once.Do(func() { close(entered) })
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.store.mu.Unlock()

	at := time.Now()
	c := keyedClaim("body", at)
	first := make(chan error, 1)
	go func() {
		r, err := e.intake.SubmitOnce(ctx, []*asset.Asset{testAsset()}, c)
		if r != nil {
			err = errors.New("the first request was answered with a replay")
		}
		first <- err
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first request did not reach the store")
	}
	if _, err := other.SubmitOnce(ctx, []*asset.Asset{testAsset()}, c); !errors.Is(err, idempotency.ErrInFlight) {
		t.Fatalf("a second request while the first writes: %v, want ErrInFlight", err)
	}
	if _, err := other.SubmitOnce(ctx, []*asset.Asset{testAsset()}, keyedClaim("another body", at)); !errors.Is(err, idempotency.ErrReused) {
		t.Fatalf("another body while the first writes: %v, want ErrReused", err)
	}
	close(gate)
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first request did not finish")
	}
	if r, err := other.SubmitOnce(ctx, []*asset.Asset{testAsset()}, c); err != nil || r == nil || string(r.Response) != string(c.Response) {
		t.Fatalf("after the first finished: %+v, %v; want its response", r, err)
	}
	if n := e.store.count("u1"); n != 1 {
		t.Fatalf("%d assets, want 1", n)
	}
}

// A request that died holding its key (its entry pending, its lease
// passed) leaves the decision to its assets: all stored → the retry gets
// the original response and nothing is created; some or none → the partial
// ones are removed and the retry creates the upload. Before the lease has
// passed the retry gets ErrInFlight.
func TestSubmitOnceAfterACrash(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		stored int // of the dead request's 2 assets
	}{{"AllStored", 2}, {"SomeStored", 1}, {"NoneStored", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := newKeyedEnv(t)
			at := time.Now().Add(-time.Hour)
			c := keyedClaim("body", at)
			dead := []*asset.Asset{testAsset(), testAsset()}
			if err := e.store.Create(ctx, dead[:tc.stored]...); err != nil {
				t.Fatal(err)
			}
			if old, err := e.keys.Reserve(ctx, idempotency.Entry{
				Record: idempotency.Record{UserID: "u1", Key: "k1", Fingerprint: c.Fingerprint, Response: c.Response, ExpiresAt: c.ExpiresAt()},
				Token:  "dead", LeaseUntil: at.Add(splitintake.Lease), AssetIDs: []string{dead[0].ID, dead[1].ID},
			}, at); err != nil || old != nil {
				t.Fatalf("reserve: %v %v", old, err)
			}

			early := c
			early.At = at.Add(splitintake.Lease - time.Second)
			if _, err := e.intake.SubmitOnce(ctx, []*asset.Asset{testAsset()}, early); !errors.Is(err, idempotency.ErrInFlight) {
				t.Fatalf("retry within the lease: %v, want ErrInFlight", err)
			}

			retry := c
			retry.At = at.Add(splitintake.Lease)
			fresh := []*asset.Asset{testAsset()}
			r, err := e.intake.SubmitOnce(ctx, fresh, retry)
			if err != nil {
				t.Fatal(err)
			}
			if tc.stored == 2 {
				if r == nil || string(r.Response) != string(c.Response) || e.store.count("u1") != 2 {
					t.Fatalf("replay %v; %d assets, want the dead request's 2", r, e.store.count("u1"))
				}
			} else {
				if r != nil || e.store.count("u1") != 1 {
					t.Fatalf("record %v; %d assets, want only the retry's", r, e.store.count("u1"))
				}
				if _, err := e.store.Get(ctx, fresh[0].ID); err != nil {
					t.Fatal(err)
				}
			}
			// Either way the key is now done: the next retry replays.
			again := retry
			again.At = retry.At.Add(time.Hour)
			if r, err := e.intake.SubmitOnce(ctx, []*asset.Asset{testAsset()}, again); err != nil || r == nil {
				t.Fatalf("next retry: %v %v; want a replay", r, err)
			}
		})
	}
}

// The same suite with the assets in mongostore on the same server: the
// whole scale-out store side is real (the queue stays in memory).
func TestSubmitOnceOnMongoStore(t *testing.T) {
	t.Parallel()
	idempotencytest.TestSubmitter(t, func(t *testing.T) idempotencytest.Env {
		uri, name := testenv.MongoURI(t)
		ms, err := mongostore.New(context.Background(), mongostore.Config{URI: uri, Database: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ms.Close(context.Background()) })
		keys, err := mongokeys.Open(context.Background(), uri, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { keys.Close() })
		in := splitintake.New(ms, newMemQueue(), keys, func() string { return ulid.Make().String() }, discard())
		return idempotencytest.Env{Submitter: in, Assets: func(ctx context.Context, user string) (int, error) {
			p, err := ms.List(ctx, user, asset.ListQuery{Limit: 100})
			return len(p.Assets), err
		}}
	})
}
