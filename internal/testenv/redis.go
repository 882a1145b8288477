package testenv

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisURLEnv names a Redis server for integration tests, e.g.
// redis://127.0.0.1:6390/0. The server should have many logical databases
// (scripts/test starts it with --databases 4096): each test gets one of its
// own.
const RedisURLEnv = "KLECTR_TEST_REDIS_URL"

// RedisURL returns the URL of an empty logical database of the test Redis,
// reserved for t and flushed again when t ends, or skips t when
// KLECTR_TEST_REDIS_URL is unset. Databases isolate keys, not pub/sub
// channels: a test that publishes must use channel names of its own.
func RedisURL(t testing.TB) string {
	t.Helper()
	raw := os.Getenv(RedisURLEnv)
	if raw == "" {
		t.Skipf("set %s=redis://127.0.0.1:6379/0 to run the tests against a real Redis", RedisURLEnv)
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		t.Fatalf("%s=%q: %v", RedisURLEnv, raw, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin := redis.NewClient(opt)
	defer admin.Close()
	n, err := databases(ctx, admin)
	if err != nil {
		t.Fatalf("%s: %v", RedisURLEnv, err)
	}
	// Database 0 holds the counter; the others go round.
	seq, err := admin.Incr(ctx, "klectr:testenv:next-db").Result()
	if err != nil {
		t.Fatalf("%s: reserving a database: %v", RedisURLEnv, err)
	}
	db := 1 + int(seq%int64(n-1))
	opt.DB = db
	c := redis.NewClient(opt)
	flush := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return c.FlushDB(ctx).Err()
	}
	if err := flush(); err != nil {
		c.Close()
		t.Fatalf("%s: flushing database %d: %v", RedisURLEnv, db, err)
	}
	t.Cleanup(func() {
		flush()
		c.Close()
	})
	u := fmt.Sprintf("redis://%s/%d", opt.Addr, db)
	if opt.Password != "" {
		u = fmt.Sprintf("redis://:%s@%s/%d", opt.Password, opt.Addr, db)
	}
	return u
}

func databases(ctx context.Context, c *redis.Client) (int, error) {
	v, err := c.ConfigGet(ctx, "databases").Result()
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v["databases"])
	if err != nil || n < 2 {
		return 0, fmt.Errorf("the server has %q logical databases; at least 2 are needed", v["databases"])
	}
	return n, nil
}
