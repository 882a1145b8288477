// Package mongokeys keeps the idempotency records of the scale-out shape in
// the MongoDB collection idempotency_keys, shared by every api process.
//
// A key's document has _id "<len(userId)>:<userId>/<key>" (the length keeps
// two users' ids from meeting): Reserve inserts it, pending, before the
// upload's assets are written, and an insert of an existing _id fails
// atomically on MongoDB and on FerretDB alike, so exactly one request of a
// key, across all nodes, holds it. Complete marks it done and Release
// deletes it, each guarded by the reserving request's token. A unique index
// on (userId, key) states the same rule for readers of the collection.
//
// An expired document is replaced by deleting it (guarded by its token)
// and inserting again. On MongoDB the guarded delete is atomic; on FerretDB,
// whose guarded writes are not (see the test servers' notes), two requests
// replacing the same expired document at the same instant could, in a narrow
// window, delete each other's fresh reservation and both proceed.
//
// Expiry: a TTL index on expiresAt where the server accepts one (MongoDB);
// FerretDB refuses TTL indexes, so Expire, which the app runs periodically
// in any case, deletes them there. A live key is never decided by TTL alone:
// Reserve treats a document past its expiresAt as absent.
package mongokeys

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/klectr/klectr/internal/idempotency"
)

// Collection is the name of the collection New uses.
const Collection = "idempotency_keys"

// maxRetries bounds Reserve's attempts to replace an expired document that
// other requests keep replacing first.
const maxRetries = 16

// Keys is the idempotency_keys collection of a database.
type Keys struct {
	c      *mongo.Collection
	ttl    bool
	client *mongo.Client // set by Open
}

type doc struct {
	ID          string    `bson:"_id"`
	UserID      string    `bson:"userId"`
	Key         string    `bson:"key"`
	Done        bool      `bson:"done"`
	Token       string    `bson:"token"`
	Fingerprint string    `bson:"fingerprint"`
	Response    []byte    `bson:"response"`
	AssetIDs    []string  `bson:"assetIds"`
	LeaseUntil  time.Time `bson:"leaseUntil"`
	ExpiresAt   time.Time `bson:"expiresAt"`
}

func docID(userID, key string) string {
	return strconv.Itoa(len(userID)) + ":" + userID + "/" + key
}

// New creates the indexes (idempotently) and returns the collection.
func New(ctx context.Context, db *mongo.Database) (*Keys, error) {
	c := db.Collection(Collection)
	if _, err := c.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "userId", Value: 1}, {Key: "key", Value: 1}},
		Options: options.Index().SetName("userId_key").SetUnique(true),
	}); err != nil {
		return nil, fmt.Errorf("mongokeys: create index: %w", err)
	}
	k := &Keys{c: c}
	_, err := c.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "expiresAt", Value: 1}}, Options: options.Index().SetName("expiresAt_ttl").SetExpireAfterSeconds(0),
	})
	if err == nil {
		k.ttl = true
		return k, nil
	}
	// No TTL (FerretDB): Expire does the work, on an index of its own.
	if _, err := c.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "expiresAt", Value: 1}}, Options: options.Index().SetName("expiresAt"),
	}); err != nil {
		return nil, fmt.Errorf("mongokeys: create index on expiresAt: %w", err)
	}
	return k, nil
}

// TTL reports whether the server expires records by itself.
func (k *Keys) TTL() bool { return k.ttl }

// Reserve inserts e as the key's pending entry (e.Done false) and returns
// nil, or returns the key's live entry when there is one. A document past
// its expiresAt at e's request time (e.Record.ExpiresAt - TTL) is replaced.
func (k *Keys) Reserve(ctx context.Context, e idempotency.Entry, at time.Time) (*idempotency.Entry, error) {
	d := doc{ID: docID(e.UserID, e.Key), UserID: e.UserID, Key: e.Key, Token: e.Token, Fingerprint: e.Fingerprint,
		Response: e.Response, AssetIDs: e.AssetIDs, LeaseUntil: e.LeaseUntil.UTC(), ExpiresAt: e.ExpiresAt.UTC()}
	for range maxRetries {
		_, err := k.c.InsertOne(ctx, d)
		if err == nil {
			return nil, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("mongokeys: reserve: %w", err)
		}
		old, err := k.get(ctx, d.ID)
		if errors.Is(err, mongo.ErrNoDocuments) {
			continue // released or expired meanwhile
		}
		if err != nil {
			return nil, err
		}
		if old.ExpiresAt.After(at) {
			return old, nil
		}
		if err := k.Release(ctx, old.UserID, old.Key, old.Token); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("mongokeys: reserve: the key changed hands %d times", maxRetries)
}

func (k *Keys) get(ctx context.Context, id string) (*idempotency.Entry, error) {
	var d doc
	if err := k.c.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, err
		}
		return nil, fmt.Errorf("mongokeys: read: %w", err)
	}
	return &idempotency.Entry{
		Record: idempotency.Record{UserID: d.UserID, Key: d.Key, Fingerprint: d.Fingerprint,
			Response: d.Response, ExpiresAt: d.ExpiresAt.UTC()},
		Done: d.Done, Token: d.Token, LeaseUntil: d.LeaseUntil.UTC(), AssetIDs: d.AssetIDs,
	}, nil
}

// Complete marks the key's entry reserved under token done.
func (k *Keys) Complete(ctx context.Context, userID, key, token string) error {
	res, err := k.c.UpdateOne(ctx, bson.D{{Key: "_id", Value: docID(userID, key)}, {Key: "token", Value: token}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "done", Value: true}}}})
	if err != nil {
		return fmt.Errorf("mongokeys: complete: %w", err)
	}
	if res.MatchedCount == 0 {
		return fmt.Errorf("mongokeys: complete: the reservation is gone")
	}
	return nil
}

// Release deletes the key's entry reserved under token, if it is still
// there.
func (k *Keys) Release(ctx context.Context, userID, key, token string) error {
	if _, err := k.c.DeleteOne(ctx, bson.D{{Key: "_id", Value: docID(userID, key)}, {Key: "token", Value: token}}); err != nil {
		return fmt.Errorf("mongokeys: release: %w", err)
	}
	return nil
}

// Expire deletes the records that expired before before.
func (k *Keys) Expire(ctx context.Context, before time.Time) (int64, error) {
	res, err := k.c.DeleteMany(ctx, bson.D{{Key: "expiresAt", Value: bson.D{{Key: "$lte", Value: before.UTC()}}}})
	if err != nil {
		return 0, fmt.Errorf("mongokeys: expire: %w", err)
	}
	return res.DeletedCount, nil
}

// Open connects to the MongoDB of uri, in the database the uri names (or
// defaultDB), and returns its keys; Close disconnects.
func Open(ctx context.Context, uri, defaultDB string) (*Keys, error) {
	cs, err := connstring.ParseAndValidate(uri)
	if err != nil {
		return nil, fmt.Errorf("mongokeys: MongoDB URI: %w", err)
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		return nil, fmt.Errorf("mongokeys: %w", err)
	}
	k, err := New(ctx, client.Database(cmp.Or(cs.Database, defaultDB)))
	if err != nil {
		client.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	k.client = client
	return k, nil
}

// Close disconnects a Keys made by Open; on one made by New it does nothing.
func (k *Keys) Close() error {
	if k.client == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return k.client.Disconnect(ctx)
}
