package testenv

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// MongoURIEnv names a MongoDB-wire server for integration tests, e.g.
// mongodb://127.0.0.1:27017/. CI runs FerretDB on PostgreSQL there
// (scripts/services.sh).
const MongoURIEnv = "KLECTR_TEST_MONGODB_URI"

// MongoURI returns the server's URI and the name of a database of t's own,
// dropped when t ends, or skips t when KLECTR_TEST_MONGODB_URI is unset.
func MongoURI(t testing.TB) (uri, database string) {
	t.Helper()
	uri = os.Getenv(MongoURIEnv)
	if uri == "" {
		t.Skipf("set %s=mongodb://127.0.0.1:27017/ to run the tests against a MongoDB-wire server", MongoURIEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatalf("%s=%q: %v", MongoURIEnv, uri, err)
	}
	if err := c.Ping(ctx, nil); err != nil {
		c.Disconnect(ctx)
		t.Fatalf("%s=%q: %v", MongoURIEnv, uri, err)
	}
	database = fmt.Sprintf("t_%s", ulid.Make().String())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c.Database(database).Drop(ctx)
		c.Disconnect(ctx)
	})
	return uri, database
}
