// Package mongolog is the eventlog.Log of the scaled-out mode, in a MongoDB
// collection.
//
// A user's order is a sequence number allocated without a counter: an append
// reads the user's newest seq and inserts the document whose _id is
// "<userId>/<seq+1, zero-padded>"; two appenders that read the same newest
// seq race on that _id, one wins, the other retries. An insert of an existing
// _id fails atomically on MongoDB and on FerretDB alike (a guarded update or
// $inc counter would not be atomic on FerretDB). A unique index on (userId,
// eventId) makes a repeated append a no-op. Order is thus the order of the
// inserts, the same for every reader.
//
// Retention: a TTL index on "at" where the server accepts one (MongoDB), and
// Expire, which the app calls periodically in any case (FerretDB has no TTL).
package mongolog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/klectr/klectr/internal/eventlog"
)

// Collection is the name of the collection New uses.
const Collection = "event_log"

// maxRetries bounds the appends that lose the race for a seq in a row; each
// loss means another append of the user succeeded.
const maxRetries = 1000

// Log keeps events in the event_log collection of a database.
type Log struct {
	c   *mongo.Collection
	ttl bool
}

var _ eventlog.Log = (*Log)(nil)

type doc struct {
	ID      string    `bson:"_id"`
	UserID  string    `bson:"userId"`
	Seq     int64     `bson:"seq"`
	EventID string    `bson:"eventId"`
	Data    string    `bson:"data"` // JSON text: its keys may hold "." or "$"
	At      time.Time `bson:"at"`
}

// New creates the indexes (idempotently) and returns the log. retention
// sets the TTL index; where the server refuses TTL indexes, only Expire
// deletes (see TTL).
func New(ctx context.Context, db *mongo.Database, retention time.Duration) (*Log, error) {
	c := db.Collection(Collection)
	// One index a call: FerretDB v1.24 drops the connection when one
	// createIndexes names several indexes that exist already.
	for _, m := range []mongo.IndexModel{
		{Keys: bson.D{{Key: "userId", Value: 1}, {Key: "eventId", Value: 1}}, Options: options.Index().SetName("userId_eventId").SetUnique(true)},
		{Keys: bson.D{{Key: "userId", Value: 1}, {Key: "seq", Value: 1}}, Options: options.Index().SetName("userId_seq")},
	} {
		if _, err := c.Indexes().CreateOne(ctx, m); err != nil {
			return nil, fmt.Errorf("mongolog: create index: %w", err)
		}
	}
	l := &Log{c: c}
	secs := int32(min(retention/time.Second, 1<<31-1))
	_, err := c.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "at", Value: 1}}, Options: options.Index().SetName("at_ttl").SetExpireAfterSeconds(max(secs, 1)),
	})
	var se mongo.ServerError
	if errors.As(err, &se) && (se.HasErrorCode(85) || se.HasErrorCode(86)) {
		// IndexOptionsConflict: at_ttl exists with another retention
		// (EVENT_RETENTION changed); set the new one.
		err = db.RunCommand(ctx, bson.D{{Key: "collMod", Value: Collection},
			{Key: "index", Value: bson.D{{Key: "name", Value: "at_ttl"}, {Key: "expireAfterSeconds", Value: max(secs, 1)}}}}).Err()
	}
	if err == nil {
		l.ttl = true
		return l, nil
	}
	// No TTL (FerretDB): Expire does the work, on an index of its own.
	if _, err := c.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "at", Value: 1}, {Key: "_id", Value: 1}}, Options: options.Index().SetName("at"),
	}); err != nil {
		return nil, fmt.Errorf("mongolog: create index on at: %w", err)
	}
	return l, nil
}

// TTL reports whether the server expires events by itself (a TTL index).
func (l *Log) TTL() bool { return l.ttl }

// Append adds the event unless userID's log holds eventID already.
func (l *Log) Append(ctx context.Context, userID, eventID string, data json.RawMessage, at time.Time) error {
	if err := eventlog.Validate(userID, eventID, data); err != nil {
		return err
	}
	// The first try inserts without looking for eventID: the unique index
	// on (userId, eventId) refuses a repeat, and only then (a duplicate
	// key) is it worth a query, which on FerretDB scans the collection.
	for i := range maxRetries {
		if i > 0 {
			if n, err := l.c.CountDocuments(ctx, bson.D{{Key: "userId", Value: userID}, {Key: "eventId", Value: eventID}}, options.Count().SetLimit(1)); err != nil {
				return fmt.Errorf("mongolog: append: %w", err)
			} else if n > 0 {
				return nil
			}
		}
		seq, err := l.lastSeq(ctx, userID)
		if err != nil {
			return err
		}
		seq++
		_, err = l.c.InsertOne(ctx, doc{
			ID: fmt.Sprintf("%s/%019d", userID, seq), UserID: userID, Seq: seq,
			EventID: eventID, Data: string(data), At: at.UTC().Truncate(time.Millisecond),
		})
		if err == nil {
			return nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return fmt.Errorf("mongolog: append: %w", err)
		}
		// Another append took seq, or appended this eventID: look again.
	}
	return fmt.Errorf("mongolog: append %s: lost the race for a position %d times", eventID, maxRetries)
}

func (l *Log) lastSeq(ctx context.Context, userID string) (int64, error) {
	var d doc
	err := l.c.FindOne(ctx, bson.D{{Key: "userId", Value: userID}},
		options.FindOne().SetSort(bson.D{{Key: "seq", Value: -1}}).SetProjection(bson.D{{Key: "seq", Value: 1}})).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("mongolog: read last position: %w", err)
	}
	return d.Seq, nil
}

// After returns userID's events after afterEventID, oldest first.
func (l *Log) After(ctx context.Context, userID, afterEventID string, limit int) ([]eventlog.Event, error) {
	var seq int64
	if afterEventID != "" {
		var d doc
		err := l.c.FindOne(ctx, bson.D{{Key: "userId", Value: userID}, {Key: "eventId", Value: afterEventID}},
			options.FindOne().SetProjection(bson.D{{Key: "seq", Value: 1}})).Decode(&d)
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, eventlog.ErrUnknownEvent
		}
		if err != nil {
			return nil, fmt.Errorf("mongolog: find %s: %w", afterEventID, err)
		}
		seq = d.Seq
	}
	cur, err := l.c.Find(ctx, bson.D{{Key: "userId", Value: userID}, {Key: "seq", Value: bson.D{{Key: "$gt", Value: seq}}}},
		options.Find().SetSort(bson.D{{Key: "seq", Value: 1}}).SetLimit(int64(eventlog.ClampLimit(limit))))
	if err != nil {
		return nil, fmt.Errorf("mongolog: read: %w", err)
	}
	var docs []doc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongolog: read: %w", err)
	}
	out := make([]eventlog.Event, len(docs))
	for i, d := range docs {
		out[i] = eventlog.Event{ID: d.EventID, Data: json.RawMessage(d.Data), At: d.At.UTC()}
	}
	return out, nil
}

// Last returns the id of userID's newest event, or "".
func (l *Log) Last(ctx context.Context, userID string) (string, error) {
	var d doc
	err := l.c.FindOne(ctx, bson.D{{Key: "userId", Value: userID}},
		options.FindOne().SetSort(bson.D{{Key: "seq", Value: -1}}).SetProjection(bson.D{{Key: "eventId", Value: 1}})).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("mongolog: last: %w", err)
	}
	return d.EventID, nil
}

// Expire deletes the events appended with a time before before.
func (l *Log) Expire(ctx context.Context, before time.Time) (int64, error) {
	res, err := l.c.DeleteMany(ctx, bson.D{{Key: "at", Value: bson.D{{Key: "$lt", Value: before.UTC()}}}})
	if err != nil {
		return 0, fmt.Errorf("mongolog: expire: %w", err)
	}
	return res.DeletedCount, nil
}
