package mongostore

import (
	"context"
	"fmt"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// server is what the connected server offers beyond the basic commands.
type server struct {
	// ferretDB is FerretDB's version, "" on MongoDB. FerretDB speaks the
	// wire protocol but tests a guarded update's filter and writes in two
	// steps (concurrent updates can all win), has no transactions and no
	// decimal128.
	ferretDB string
	// transactions: a replica set or a sharded cluster of MongoDB.
	transactions bool
}

// hello and buildInfo are the parts of those commands' replies that
// tell what the server offers.
type (
	hello struct {
		SetName        string `bson:"setName"`
		Msg            string `bson:"msg"` // "isdbgrid" from mongos
		SessionTimeout *int64 `bson:"logicalSessionTimeoutMinutes"`
	}
	buildInfo struct {
		FerretDB string `bson:"ferretdbVersion"`
	}
)

func probe(ctx context.Context, c *mongo.Client) (server, error) {
	admin := c.Database("admin")
	var h hello
	if err := admin.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&h); err != nil {
		return server{}, fmt.Errorf("hello: %w", err)
	}
	var b buildInfo
	if err := admin.RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&b); err != nil {
		return server{}, fmt.Errorf("buildInfo: %w", err)
	}
	return detect(h, b), nil
}

func detect(h hello, b buildInfo) server {
	return server{
		ferretDB: b.FerretDB,
		// FerretDB may report a replica set name, but refuses transactions.
		transactions: b.FerretDB == "" && h.SessionTimeout != nil && (h.SetName != "" || h.Msg == "isdbgrid"),
	}
}

// indexes serve every query of the store, by name; each query's comment
// names its index. Keys follow equality, sort, range. None is partial or TTL.
var indexes = []struct {
	name string
	keys bson.D
}{
	{"userId_createdAt_id", bson.D{{Key: "userId", Value: 1}, {Key: "createdAt", Value: -1}, {Key: "_id", Value: -1}}},
	{"userId_status_createdAt_id", bson.D{{Key: "userId", Value: 1}, {Key: "status", Value: 1}, {Key: "createdAt", Value: -1}, {Key: "_id", Value: -1}}},
	{"eventPending_processedAt_id", bson.D{{Key: "eventPending", Value: 1}, {Key: "processedAt", Value: 1}, {Key: "_id", Value: 1}}},
	{"status_id_updatedAt", bson.D{{Key: "status", Value: 1}, {Key: "_id", Value: 1}, {Key: "updatedAt", Value: 1}}},
	{"blobKey", bson.D{{Key: "blobKey", Value: 1}}},
	{"receivedAt", bson.D{{Key: "receivedAt", Value: -1}}},
}

// createIndexes creates the indexes the collection does not have by name.
// It asks only for missing ones: FerretDB drops the connection when asked
// to create an index that exists.
func createIndexes(ctx context.Context, coll *mongo.Collection) error {
	existing, err := coll.Indexes().ListSpecifications(ctx)
	if err != nil {
		return err
	}
	var models []mongo.IndexModel
	for _, ix := range indexes {
		if !slices.ContainsFunc(existing, func(e mongo.IndexSpecification) bool { return e.Name == ix.name }) {
			models = append(models, mongo.IndexModel{Keys: ix.keys, Options: options.Index().SetName(ix.name)})
		}
	}
	if len(models) == 0 {
		return nil
	}
	_, err = coll.Indexes().CreateMany(ctx, models)
	return err
}
