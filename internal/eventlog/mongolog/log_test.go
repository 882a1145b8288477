package mongolog_test

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/eventlogtest"
	"github.com/klectr/klectr/internal/eventlog/mongolog"
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

func TestLog(t *testing.T) {
	t.Parallel()
	eventlogtest.TestLog(t, func(t *testing.T) eventlog.Log {
		l, err := mongolog.New(context.Background(), database(t), eventlog.DefaultRetention)
		if err != nil {
			t.Fatal(err)
		}
		return l
	})
}

// New is idempotent: a second process (or a restart, also with another
// retention) finds the indexes.
func TestNewTwice(t *testing.T) {
	t.Parallel()
	db := database(t)
	first, err := mongolog.New(context.Background(), db, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	second, err := mongolog.New(context.Background(), db, 2*time.Hour) // EVENT_RETENTION changed
	if err != nil {
		t.Fatalf("second New: %v", err)
	}
	if first.TTL() != second.TTL() {
		t.Errorf("TTL %v then %v", first.TTL(), second.TTL())
	}
	t.Logf("server accepts a TTL index: %v", first.TTL())
}
