package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func TestRedisURLGivesEachTestAnEmptyDatabase(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var urls []string
	for range 2 {
		t.Run("", func(t *testing.T) {
			u := RedisURL(t)
			opt, err := redis.ParseURL(u)
			if err != nil {
				t.Fatal(err)
			}
			c := redis.NewClient(opt)
			defer c.Close()
			if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
				t.Fatalf("DBSIZE = %d, %v; want an empty database", n, err)
			}
			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
			urls = append(urls, u)
		})
	}
	if len(urls) == 2 && urls[0] == urls[1] {
		t.Errorf("two tests got the same database %s", urls[0])
	}
}

func TestMongoURIGivesEachTestItsOwnDatabase(t *testing.T) {
	t.Parallel()
	uri, db := MongoURI(t)
	_, db2 := MongoURI(t)
	if db == db2 {
		t.Fatalf("two calls gave the same database %q", db)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(ctx)
	if _, err := c.Database(db).Collection("c").InsertOne(ctx, bson.M{"_id": "x"}); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Database(db2).Collection("c").CountDocuments(ctx, bson.M{}); err != nil || n != 0 {
		t.Fatalf("the other database holds %d documents (%v); want 0", n, err)
	}
}
