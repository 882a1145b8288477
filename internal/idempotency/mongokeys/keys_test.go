package mongokeys_test

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/idempotency/mongokeys"
	"github.com/klectr/klectr/internal/testenv"
)

func database(t *testing.T) *mongo.Database {
	t.Helper()
	uri, name := testenv.MongoURI(t)
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(context.Background()) })
	return c.Database(name)
}

func entry(user, key, token string, at time.Time) idempotency.Entry {
	return idempotency.Entry{Record: idempotency.Record{UserID: user, Key: key, Fingerprint: "f", Response: []byte(`{}`),
		ExpiresAt: at.Add(idempotency.TTL)}, Token: token, LeaseUntil: at.Add(time.Minute), AssetIDs: []string{"a"}}
}

// New is idempotent (every api process calls it at start-up), and where the
// server has no TTL index (FerretDB) Expire deletes what has expired, and
// only that.
func TestNewTwiceAndExpire(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := database(t)
	k, err := mongokeys.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mongokeys.New(ctx, db); err != nil {
		t.Fatalf("second New: %v", err)
	}
	t.Logf("server accepts a TTL index: %v", k.TTL())

	t0 := time.Now().Add(-48 * time.Hour)
	for i, at := range []time.Time{t0, t0.Add(30 * time.Hour)} {
		if old, err := k.Reserve(ctx, entry("u1", string(rune('a'+i)), "t", at), at); err != nil || old != nil {
			t.Fatalf("reserve: %v %v", old, err)
		}
	}
	n, err := k.Expire(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !k.TTL() && n != 1 {
		t.Fatalf("Expire deleted %d entries, want the 1 expired", n)
	}
	// The live one is still there; the expired key is free.
	at := time.Now()
	if old, err := k.Reserve(ctx, entry("u1", "b", "t2", at), at); err != nil || old == nil || old.Token != "t" {
		t.Fatalf("live entry: %+v, %v", old, err)
	}
	if old, err := k.Reserve(ctx, entry("u1", "a", "t2", at), at); err != nil || old != nil {
		t.Fatalf("expired key: %+v, %v", old, err)
	}
}

// Reserve treats an entry past its expiresAt as absent even before any
// Expire (or TTL monitor) has removed it, and Complete and Release touch
// only the entry of their token.
func TestReserveReplacesAnExpiredEntryAndTokensGuard(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	k, err := mongokeys.New(ctx, database(t))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if old, err := k.Reserve(ctx, entry("u1", "k", "t1", at), at); err != nil || old != nil {
		t.Fatal(old, err)
	}
	later := at.Add(idempotency.TTL)
	if old, err := k.Reserve(ctx, entry("u1", "k", "t2", later), later); err != nil || old != nil {
		t.Fatalf("reserve after expiry: %+v, %v", old, err)
	}
	if err := k.Complete(ctx, "u1", "k", "t1"); err == nil {
		t.Fatal("Complete with the replaced entry's token succeeded")
	}
	if err := k.Release(ctx, "u1", "k", "t1"); err != nil {
		t.Fatal(err)
	}
	if err := k.Complete(ctx, "u1", "k", "t2"); err != nil {
		t.Fatalf("Complete with the holder's token: %v", err)
	}
	old, err := k.Reserve(ctx, entry("u1", "k", "t3", later), later)
	if err != nil || old == nil || !old.Done || old.Token != "t2" {
		t.Fatalf("entry after Complete: %+v, %v", old, err)
	}
}

// Open connects by URI, in the database the URI names or the default one.
func TestOpen(t *testing.T) {
	t.Parallel()
	uri, name := testenv.MongoURI(t)
	k, err := mongokeys.Open(context.Background(), uri, name)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	at := time.Now()
	if old, err := k.Reserve(context.Background(), entry("u1", "k", "t", at), at); err != nil || old != nil {
		t.Fatalf("reserve: %v %v", old, err)
	}
	n, err := database(t).Client().Database(name).Collection(mongokeys.Collection).CountDocuments(context.Background(), map[string]any{})
	if err != nil || n != 1 {
		t.Fatalf("%d documents in %s.%s, %v", n, name, mongokeys.Collection, err)
	}
}
