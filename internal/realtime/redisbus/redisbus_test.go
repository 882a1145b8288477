package redisbus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"

	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/realtime/bustest"
	"github.com/klectr/klectr/internal/realtime/redisbus"
	"github.com/klectr/klectr/internal/testenv"
)

func TestBus(t *testing.T) {
	t.Parallel()
	bustest.TestBus(t, func(t *testing.T) func() realtime.Bus {
		url := testenv.RedisURL(t)
		channel := "klectr:test:" + ulid.Make().String()
		return func() realtime.Bus { return open(t, url, channel) }
	})
}

func open(t *testing.T, url, channel string) *redisbus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := redisbus.New(ctx, redisbus.Config{URL: url, Channel: channel})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestNewFailsFastWhenRedisIsUnreachable(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	start := time.Now()
	_, err := redisbus.New(context.Background(), redisbus.Config{URL: "redis://" + addr + "/0"})
	if err == nil {
		t.Fatal("New succeeded without a Redis")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("New took %v to fail", d)
	}
	if _, err := redisbus.New(context.Background(), redisbus.Config{URL: "http://example.com"}); err == nil {
		t.Error("New accepted a non-Redis URL")
	}
}

func TestCloseStopsSubscriptions(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	channel := "klectr:test:" + ulid.Make().String()
	pub, sub := open(t, url, channel), open(t, url, channel)
	got := make(chan realtime.Message, 10)
	stop, err := sub.Subscribe(context.Background(), func(m realtime.Message) { got <- m }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	stop() // still safe after Close
	if err := sub.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := pub.Publish(context.Background(), realtime.Message{UserID: "u1", Event: "e"}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		t.Fatalf("closed bus delivered %+v", m)
	case <-time.After(300 * time.Millisecond):
	}
	if err := sub.Ping(context.Background()); err == nil {
		t.Error("Ping of a closed bus succeeded")
	}
}

// TestSubscriptionSurvivesRedisRestart: a Redis killed and started again on
// the same address; the subscription made before receives what is published
// after, without subscribing again.
func TestSubscriptionSurvivesRedisRestart(t *testing.T) {
	t.Parallel()
	const binEnv = "KLECTR_TEST_REDIS_BIN"
	bin := os.Getenv(binEnv)
	if bin == "" {
		t.Skipf("set %s to a redis-server binary to run the Redis restart test", binEnv)
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	srv := startRedis(t, bin, port)
	url := "redis://" + addr + "/0"
	channel := "klectr:test:" + ulid.Make().String()
	pub, sub := open(t, url, channel), open(t, url, channel)

	got := make(chan realtime.Message, 1024)
	gaps := make(chan struct{}, 16)
	stop, err := sub.Subscribe(context.Background(), func(m realtime.Message) { got <- m }, func() { gaps <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	send := func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return pub.Publish(ctx, realtime.Message{UserID: "u1", Event: "e", Data: json.RawMessage(strconv.Itoa(i))})
	}
	if err := send(0); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, got, 5*time.Second); string(m.Data) != "0" {
		t.Fatalf("before the restart got %s", m.Data)
	}

	srv.Process.Kill()
	srv.Wait()
	if err := send(-1); err == nil {
		t.Error("Publish succeeded while Redis was down")
	}
	restarted := time.Now()
	startRedis(t, bin, port)

	// Messages published before the subscription is back are lost (the
	// documented gap); keep publishing until one arrives.
	deadline := time.Now().Add(30 * time.Second)
	for i := 1; ; i++ {
		if time.Now().After(deadline) {
			t.Fatal("the subscription received nothing within 30 s of Redis restarting")
		}
		if err := send(i); err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case m := <-got:
			t.Logf("first message after the restart: %s, %v after Redis started again", m.Data, time.Since(restarted).Round(time.Millisecond))
			// The gap was reported before it: fn and onGap run on one
			// goroutine, in order.
			select {
			case <-gaps:
			default:
				t.Error("a message arrived after the restart, but onGap was not called before it")
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestGapWhenOnlyTheSubscriberIsCut: the subscriber's connection to Redis
// breaks while the publisher's does not, so a Publish succeeds that the
// subscription never receives. When the subscription is back, onGap is
// called once, before any message published after that.
func TestGapWhenOnlyTheSubscriberIsCut(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartProxy(t, opt.Addr)
	channel := "klectr:test:" + ulid.Make().String()
	pub := open(t, url, channel)
	sub := open(t, fmt.Sprintf("redis://%s/%d", proxy.Addr, opt.DB), channel)

	// seen receives "gap" and each message's data, in the order the
	// subscription reported them.
	seen := make(chan string, 1024)
	stop, err := sub.Subscribe(context.Background(),
		func(m realtime.Message) { seen <- string(m.Data) },
		func() { seen <- "gap" })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	send := func(data string) {
		t.Helper()
		m := realtime.Message{UserID: "u1", Event: "e", Data: json.RawMessage(strconv.Quote(data))}
		if err := pub.Publish(context.Background(), m); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	next := func() string {
		t.Helper()
		select {
		case v := <-seen:
			return v
		case <-time.After(30 * time.Second):
			t.Fatal("nothing reported within 30 s")
			return ""
		}
	}
	send("before")
	if v := next(); v != `"before"` {
		t.Fatalf("got %s before the cut", v)
	}

	proxy.Cut()
	send("lost") // Redis takes it; the subscription is not there
	time.Sleep(500 * time.Millisecond)
	proxy.Heal()
	if v := next(); v != "gap" {
		t.Fatalf("after the cut the subscription reported %s, want the gap first", v)
	}
	send("after")
	if v := next(); v != `"after"` {
		t.Fatalf("after the gap got %s, want \"after\"", v)
	}
	select {
	case v := <-seen:
		t.Errorf("then %s as well; want one gap for one loss", v)
	case <-time.After(500 * time.Millisecond):
	}
}

// TestPublishFailsWithinBounds: a Publish that Redis does not take returns
// an error, so the caller keeps the event owed: at once when the connection
// is refused, within a few seconds when Redis accepts connections but never
// answers.
func TestPublishFailsWithinBounds(t *testing.T) {
	t.Parallel()
	url := testenv.RedisURL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartProxy(t, opt.Addr)
	pub := open(t, fmt.Sprintf("redis://%s/%d", proxy.Addr, opt.DB), "klectr:test:"+ulid.Make().String())
	m := realtime.Message{UserID: "u1", Event: "e"}
	if err := pub.Publish(context.Background(), m); err != nil {
		t.Fatalf("Publish before the cut: %v", err)
	}
	for _, c := range []struct {
		name  string
		fault func()
		bound time.Duration
	}{
		{"refused", proxy.Cut, 3 * time.Second},
		{"unanswered", proxy.Stall, 8 * time.Second},
	} {
		proxy.Heal()
		c.fault()
		start := time.Now()
		err := pub.Publish(context.Background(), m)
		if d := time.Since(start); err == nil || d > c.bound {
			t.Errorf("%s: Publish = %v after %v; want an error within %v", c.name, err, d.Round(time.Millisecond), c.bound)
		}
	}
}

func receive(t *testing.T, ch <-chan realtime.Message, d time.Duration) realtime.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(d):
		t.Fatalf("no message within %v", d)
		return realtime.Message{}
	}
}

// startRedis runs a Redis without persistence on 127.0.0.1:port and waits
// until it answers; it is killed when t ends.
func startRedis(t *testing.T, bin, port string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
		if err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on port %s did not start: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a loopback address nobody listens on (for now).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr())
}
