package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/klectr/klectr/internal/testenv"
)

// Fault tests that kill a server start their own, from these variables
// (scripts/services.sh sets them), and skip naming the variable when unset.
const (
	redisBinEnv    = "KLECTR_TEST_REDIS_BIN"    // a redis-server binary
	ferretDBCmdEnv = "KLECTR_TEST_FERRETDB_CMD" // the command line of a FerretDB on PostgreSQL
)

// dbServer is a database server process of a test's own, which the test may
// kill with SIGKILL and start again on the same address and data.
type dbServer struct {
	t    *testing.T
	name string
	addr string
	args []string // the command line
	ping func(ctx context.Context) error

	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func (s *dbServer) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	s.out = &lockedBuffer{}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.done = make(chan struct{})
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.name, err)
	}
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(s.cmd, s.done)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.ping(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-s.done:
			s.t.Fatalf("%s exited at start: %v\n%s", s.name, s.cmd.ProcessState, s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			s.kill()
			s.t.Fatalf("%s did not answer within 30s: %v\n%s", s.name, err, s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL (kill -9) and waits until the process is gone.
func (s *dbServer) kill() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

// startRedisServer runs a redis-server of t's own from KLECTR_TEST_REDIS_BIN
// on a free loopback port, with AOF in a directory of t's own.
func startRedisServer(t *testing.T) *dbServer {
	t.Helper()
	bin := os.Getenv(redisBinEnv)
	if bin == "" {
		t.Skipf("set %s=/usr/bin/redis-server to run the tests that kill a Redis of their own", redisBinEnv)
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	s := &dbServer{t: t, name: "redis-server", addr: addr,
		args: []string{bin, "--port", port, "--bind", "127.0.0.1", "--appendonly", "yes", "--dir", t.TempDir(), "--save", ""},
		ping: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }}
	s.start()
	t.Cleanup(s.kill)
	return s
}

// startFerretDB runs a FerretDB of t's own: KLECTR_TEST_FERRETDB_CMD with
// its own listen and debug addresses and state directory. It shares the
// PostgreSQL of that command, so callers use a database name of their own.
func startFerretDB(t *testing.T) *dbServer {
	t.Helper()
	line := os.Getenv(ferretDBCmdEnv)
	if line == "" {
		t.Skipf("set %s to a FerretDB command line (see scripts/services.sh) to run the tests that restart a MongoDB-wire server", ferretDBCmdEnv)
	}
	fields := strings.Fields(line)
	addr := freeAddr(t)
	own := map[string]string{"--listen-addr": addr, "--debug-addr": freeAddr(t), "--state-dir": t.TempDir()}
	args := []string{fields[0]}
	for i := 1; i < len(fields); i++ {
		name, _, hasValue := strings.Cut(fields[i], "=")
		if _, ok := own[name]; !ok {
			args = append(args, fields[i])
			continue
		}
		if !hasValue {
			i++ // the value is the next field
		}
	}
	for name, v := range own {
		args = append(args, name+"="+v)
	}
	client, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + addr + "/").SetServerSelectionTimeout(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		client.Disconnect(ctx)
	})
	s := &dbServer{t: t, name: "FerretDB", addr: addr, args: args,
		ping: func(ctx context.Context) error { return client.Ping(ctx, nil) }}
	s.start()
	t.Cleanup(s.kill)
	return s
}

// holdAI answers after delay, except while holding: calls arriving then
// wait until released. It records the held calls whose caller went away (a
// killed worker's).
type holdAI struct {
	*fakeAI

	mu      sync.Mutex
	holding bool
	waiting []chan struct{} // the held calls, in order of arrival
	cut     map[string]time.Time
}

func newHoldAI(t *testing.T, delay time.Duration, holding bool) *holdAI {
	h := &holdAI{holding: holding, cut: map[string]time.Time{}}
	h.fakeAI = newFakeAI(t, func(r *http.Request, id string, seq, call int) (int, string) {
		h.mu.Lock()
		var gate chan struct{}
		if h.holding {
			gate = make(chan struct{})
			h.waiting = append(h.waiting, gate)
		}
		h.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				h.mu.Lock()
				if i := slices.Index(h.waiting, gate); i >= 0 {
					h.waiting = slices.Delete(h.waiting, i, i+1)
				}
				h.cut[id] = time.Now()
				h.mu.Unlock()
				return 0, ""
			}
		}
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return 0, ""
		}
		return http.StatusOK, fmt.Sprintf(`{"label":"card","seq":%d,"call":%d}`, seq, call)
	})
	return h
}

// hold makes the calls from now on wait until released.
func (h *holdAI) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.holding = true
}

// release lets the first n held calls go on; n < 0 releases them all and
// stops holding.
func (h *holdAI) release(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n < 0 {
		h.holding = false
		n = len(h.waiting)
	}
	n = min(n, len(h.waiting))
	for _, gate := range h.waiting[:n] {
		close(gate)
	}
	h.waiting = h.waiting[n:]
}

func (h *holdAI) heldCalls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waiting)
}

func (h *holdAI) cutCalls() map[string]time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]time.Time, len(h.cut))
	for k, v := range h.cut {
		out[k] = v
	}
	return out
}

// uploadN uploads requests × perRequest copies of image, failing t on any
// refusal, and returns the accepted ids.
func uploadN(t *testing.T, baseURL, token string, image []byte, requests, perRequest int) []string {
	t.Helper()
	var ids []string
	for range requests {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		_, got, err := upload(ctx, baseURL, token, image, perRequest, 0, 0)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	return ids
}

// outageUpload is an upload sent while a dependency is down.
type outageUpload struct {
	status int
	ids    []string
	err    error
	took   time.Duration
}

func (o outageUpload) String() string {
	if o.err == nil {
		return fmt.Sprintf("202 with %d assets after %v", len(o.ids), o.took.Round(time.Millisecond))
	}
	return fmt.Sprintf("%v after %v", o.err, o.took.Round(time.Millisecond))
}

// uploadDuringOutage sends an upload at once and delivers its outcome on the
// channel; it is bounded at 60 s.
func uploadDuringOutage(baseURL, token string, image []byte) <-chan outageUpload {
	ch := make(chan outageUpload, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		start := time.Now()
		status, ids, err := upload(ctx, baseURL, token, image, 2, 0, 0)
		ch <- outageUpload{status, ids, err, time.Since(start)}
	}()
	return ch
}

// checkOutageUpload: DESIGN §2 — while a dependency is down an upload is
// refused with 503 and nothing is accepted, or it is accepted durably.
// It returns the accepted ids.
func checkOutageUpload(t *testing.T, ch <-chan outageUpload) (outageUpload, []string) {
	t.Helper()
	select {
	case o := <-ch:
		if o.err != nil && o.status != http.StatusServiceUnavailable {
			t.Errorf("an upload while a dependency was down: %v; want 503 unavailable (or a durable 202)", o)
		}
		return o, o.ids
	case <-time.After(90 * time.Second):
		t.Fatal("the upload sent during the outage did not end")
		return outageUpload{}, nil
	}
}

// checkNothingElse fails t for every stored asset that was never accepted:
// a refused upload must leave nothing behind.
func checkNothingElse(t *testing.T, docs map[string]storedAssetDoc, accepted []string) {
	t.Helper()
	ok := map[string]bool{}
	for _, id := range accepted {
		ok[id] = true
	}
	for id, d := range docs {
		if !ok[id] {
			t.Errorf("asset %s (%s) is stored, yet no upload was accepted with it: a refused upload left it behind", id, d.Status)
		}
	}
}

// testWorkerKill: two workers, each with its AI calls held; one is killed
// with SIGKILL. Its jobs run again (on the other worker, once asynq's lease
// on them has expired) and every asset ends draft with its event sent.
func testWorkerKill(t *testing.T, bin string) {
	const perWorker, total = 4, 16
	ai := newHoldAI(t, 50*time.Millisecond, true)
	uri, db := testenv.MongoURI(t)
	c := newCluster(t, bin, testenv.RedisURL(t), uri, db, ai.fakeAI, map[string]string{"WORKER_CONCURRENCY": fmt.Sprint(perWorker)})
	api := c.start("api")
	w1, w2 := c.start("worker"), c.start("worker")
	alice, token := c.user("alice")
	sio := startSIO(t)
	sio.connect("alice", api.url, token, true)

	ids := uploadN(t, api.url, token, fixture(t, "valid/video-001.q50.420.jpeg"), 2, total/2)
	ai.waitCalls(t, 2*perWorker, 60*time.Second) // both workers full
	killed := time.Now()
	c.kill9(w1)
	waitFor(t, 30*time.Second, "the killed worker's AI calls to be cut", func() bool { return len(ai.cutCalls()) >= perWorker })
	ai.release(-1)
	cut := ai.cutCalls()
	if len(cut) != perWorker {
		t.Fatalf("%d AI calls cut by the kill; want the killed worker's %d", len(cut), perWorker)
	}

	// The interrupted jobs run again once their lease has expired.
	var first, last time.Duration
	// asynq's lease: 60 to 120 s (internal/queue/redisqueue).
	ai.waitUntil(t, 180*time.Second, "the killed worker's jobs to run again", func(calls []aiCall) bool {
		again := map[string]time.Duration{}
		for _, call := range calls {
			if _, ok := cut[call.AssetID]; ok && call.Call == 2 {
				again[call.AssetID] = call.At.Sub(killed)
			}
		}
		first, last = time.Duration(1<<62), 0
		for _, d := range again {
			first, last = min(first, d), max(last, d)
		}
		return len(again) == len(cut)
	})
	docs, settled := c.waitSettled(ids, time.Minute)
	want := c.checkStored(docs, map[string][]string{alice: {"alice"}}, false)
	if len(docs) != total {
		t.Errorf("%d assets stored, %d accepted", len(docs), total)
	}
	survivor := finalsBy(w2)
	for _, id := range ids {
		n := len(ai.callsOf(id))
		if _, interrupted := cut[id]; interrupted {
			if n != 2 || !survivor[id] {
				t.Errorf("interrupted asset %s: %d AI calls, finished by the other worker %v; want 2 calls and the survivor finishing it", id, n, survivor[id])
			}
		} else if n != 1 {
			t.Errorf("asset %s: %d AI calls; only the killed worker's jobs run twice", id, n)
		}
	}
	c.waitEvents(sio, docs, time.Minute)
	checkClientEvents(t, sio, want, true)
	c.stopAll()
	t.Logf("kill -9 of a worker with %d jobs in the AI call (2 workers, WORKER_CONCURRENCY %d): its jobs ran again on the other worker %v (first) to %v (last) after the kill; all %d final %v after it",
		len(cut), perWorker, first.Round(time.Millisecond), last.Round(time.Millisecond), total, settled.Sub(killed).Round(time.Millisecond))
}

// testAPIKill: api A is killed with SIGKILL while a dozen clients stream
// uploads into it. Every asset in the store has its blob and ends final
// with its event sent; what the list shows is exactly what is stored.
func testAPIKill(t *testing.T, bin string) {
	const clients, perRequest = 12, 3
	ai := slowAI(t, 50*time.Millisecond)
	uri, db := testenv.MongoURI(t)
	c := newCluster(t, bin, testenv.RedisURL(t), uri, db, ai, map[string]string{"WORKER_CONCURRENCY": "8"})
	apiA, apiB := c.start("api"), c.start("api")
	c.start("worker")
	alice, token := c.user("alice")
	sio := startSIO(t)
	sio.connect("alice@B", apiB.url, token, true)
	image := fixture(t, "valid/go-turns-two-280x360.jpeg")

	var (
		mu       sync.Mutex
		accepted []string
		refused  []string // replies other than 202 before the kill
		cutOff   int      // requests without a reply
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				// ~37 KiB an image in 4 KiB chunks: each request spends
				// tens of milliseconds mid-body.
				status, ids, err := upload(ctx, apiA.url, token, image, perRequest, 4<<10, 2*time.Millisecond)
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					accepted = append(accepted, ids...)
				case status != 0:
					refused = append(refused, err.Error())
				default:
					cutOff++
				}
				mu.Unlock()
				if status == 0 && err != nil {
					return // api A is gone
				}
			}
		})
	}
	waitFor(t, 90*time.Second, "30 uploads accepted by api A", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted) >= 30*perRequest
	})
	c.kill9(apiA)
	close(stop)
	wg.Wait() // each request is bounded by its context
	mu.Lock()
	before, nCut := len(accepted)/perRequest, cutOff
	if len(refused) > 0 {
		t.Errorf("api A refused %d uploads before the kill: %v", len(refused), refused[:min(3, len(refused))])
	}
	mu.Unlock()

	// The service carries on through api B.
	accepted = append(accepted, uploadUntilAccepted(t, apiB.url, token, image, perRequest, 30*time.Second)...)
	docs, _ := c.waitSettled(accepted, 2*time.Minute)
	want := c.checkStored(docs, map[string][]string{alice: {"alice@B"}}, false)
	listed := listAssets(t, apiB.url, token)
	for id := range docs {
		if !listed[id] {
			t.Errorf("asset %s is stored but not listed", id)
		}
	}
	for id := range listed {
		if _, ok := docs[id]; !ok {
			t.Errorf("asset %s is listed but not stored", id)
		}
	}
	ack := map[string]bool{}
	for _, id := range accepted {
		ack[id] = true
	}
	unacked := 0
	for id := range docs {
		if !ack[id] {
			unacked++
		}
	}
	c.waitEvents(sio, docs, 90*time.Second)
	checkClientEvents(t, sio, want, true)
	c.stopAll()
	t.Logf("kill -9 of api A with %d clients streaming uploads of %d images: %d requests accepted before it, %d cut without a reply; "+
		"the store holds %d assets, every one final with its blob and event (%d committed whose 202 never reached the client); %d blobs in S3, %d orphaned for the sweep",
		clients, perRequest, before, nCut, len(docs), unacked, c.s3.objects(t), c.s3.objects(t)-len(docs))
}

// listAssets pages through GET /api/assets and returns the ids listed.
func listAssets(t *testing.T, baseURL, token string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	cursor := ""
	for range 1000 {
		var page struct {
			Assets     []struct{ ID string }
			NextCursor *string
		}
		path := "/api/assets?limit=100"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		if status, err := getJSON(baseURL, path, token, &page); status != http.StatusOK || err != nil {
			t.Fatalf("GET %s: %d %v", path, status, err)
		}
		for _, a := range page.Assets {
			out[a.ID] = true
		}
		if page.NextCursor == nil || *page.NextCursor == "" {
			return out
		}
		cursor = *page.NextCursor
	}
	t.Fatal("GET /api/assets: more than 1000 pages")
	return nil
}

// testRedisKill: the queue's Redis (AOF on) is killed with SIGKILL while
// jobs are in the AI call and others wait, and started again on the same
// data. The AI holds the calls in flight until Redis answers again, so that
// their events are published the moment it is back. Nothing is lost: every
// accepted asset ends draft and its event reaches the client.
func testRedisKill(t *testing.T, bin string) {
	const total, concurrency = 40, 4
	rs := startRedisServer(t)
	ai := newHoldAI(t, 200*time.Millisecond, false)
	uri, db := testenv.MongoURI(t)
	c := newCluster(t, bin, "redis://"+rs.addr+"/0", uri, db, ai.fakeAI, map[string]string{"WORKER_CONCURRENCY": fmt.Sprint(concurrency)})
	api := c.start("api")
	c.start("worker")
	alice, token := c.user("alice")
	sio := startSIO(t)
	sio.connect("alice", api.url, token, true)
	image := fixture(t, "valid/video-001.q50.420.jpeg")

	accepted := uploadN(t, api.url, token, image, 4, total/4)
	ai.waitCalls(t, 8, 60*time.Second)
	ai.hold()
	waitFor(t, 30*time.Second, "the worker's AI calls to be held", func() bool { return ai.heldCalls() == concurrency })
	killed := time.Now()
	rs.kill()
	callsAtKill := len(ai.all())
	during := uploadDuringOutage(api.url, token, image)
	// Half the held jobs finish while Redis is down (their events cannot be
	// published then), the other half the moment it is back.
	time.Sleep(300 * time.Millisecond)
	ai.release(concurrency / 2)
	time.Sleep(2*time.Second - time.Since(killed)) // an outage of 2 s at least
	rs.start()
	ai.release(-1)
	restarted := time.Now()
	t.Logf("Redis killed at %s, answering again at %s", killed.UTC().Format(time.RFC3339Nano), restarted.UTC().Format(time.RFC3339Nano))
	outage, ids := checkOutageUpload(t, during)
	accepted = append(accepted, ids...)
	accepted = append(accepted, uploadUntilAccepted(t, api.url, token, image, 10, time.Minute)...)

	docs, settled := c.waitSettled(accepted, 150*time.Second)
	checkNothingElse(t, docs, accepted)
	want := c.checkStored(docs, map[string][]string{alice: {"alice"}}, false)
	twice := 0
	for _, id := range accepted {
		if n := len(ai.callsOf(id)); n > 1 {
			twice++
		}
	}
	c.waitEvents(sio, docs, 90*time.Second)
	checkClientEvents(t, sio, want, true)
	c.stopAll()
	t.Logf("Redis kill -9 after %d of %d AI calls, with %d held: half let finish during the outage, half as it ended; down %v; an upload sent while it was down: %s; all %d accepted assets final with events sent %v after the restart (%d jobs ran more than once)",
		callsAtKill, total, concurrency, restarted.Sub(killed).Round(time.Millisecond), outage, len(accepted), settled.Sub(restarted).Round(time.Millisecond), twice)
}

// testRedisFlush: Redis loses every key (FLUSHALL) while jobs are in the AI
// call and queued. The asset store is the source of truth: the reconciler
// re-enqueues every asset left processing and all of them finish.
func testRedisFlush(t *testing.T, bin string) {
	const total, concurrency = 20, 4
	rs := startRedisServer(t)
	ai := newHoldAI(t, 50*time.Millisecond, true)
	uri, db := testenv.MongoURI(t)
	c := newCluster(t, bin, "redis://"+rs.addr+"/0", uri, db, ai.fakeAI, map[string]string{"WORKER_CONCURRENCY": fmt.Sprint(concurrency)})
	api := c.start("api")
	c.start("worker")
	alice, token := c.user("alice")
	sio := startSIO(t)
	sio.connect("alice", api.url, token, true)
	image := fixture(t, "valid/video-001.q50.420.jpeg")

	accepted := uploadN(t, api.url, token, image, 2, total/2)
	ai.waitCalls(t, concurrency, 60*time.Second)
	rdb := redis.NewClient(&redis.Options{Addr: rs.addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	flushed := time.Now()
	active := map[string]bool{}
	for _, call := range ai.all() {
		active[call.AssetID] = true
	}
	ai.release(-1)
	accepted = append(accepted, uploadUntilAccepted(t, api.url, token, image, 5, 30*time.Second)...)

	docs, settled := c.waitSettled(accepted, 150*time.Second)
	checkNothingElse(t, docs, accepted)
	want := c.checkStored(docs, map[string][]string{alice: {"alice"}}, false)
	for _, id := range accepted {
		if len(ai.callsOf(id)) == 0 {
			t.Errorf("asset %s is final without an AI call", id)
		}
	}
	c.waitEvents(sio, docs, 90*time.Second)
	checkClientEvents(t, sio, want, true)
	c.stopAll()
	t.Logf("FLUSHALL with %d jobs in the AI call and %d queued: all %d accepted assets final with events sent %v after it (the queued ones re-enqueued by the reconciler)",
		len(active), total-len(active), len(accepted), settled.Sub(flushed).Round(time.Millisecond))
}

// testMongoRestart: the MongoDB-wire server (a FerretDB of the test's own)
// is killed with SIGKILL while jobs run, and started again. The service
// recovers by itself and nothing is lost: every accepted asset ends final
// (draft, or failed if every attempt met the outage) with its event sent.
func testMongoRestart(t *testing.T, bin string) {
	fd := startFerretDB(t)
	db := "t_cluster_" + strings.ToLower(ulid.Make().String())
	ai := slowAI(t, 50*time.Millisecond)
	c := newCluster(t, bin, testenv.RedisURL(t), "mongodb://"+fd.addr+"/", db, ai,
		map[string]string{"WORKER_CONCURRENCY": "4", "JOB_BACKOFF": "1s"})
	t.Cleanup(func() { // before the server stops (cleanups run last first)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c.assets.Database().Drop(ctx)
	})
	api := c.start("api")
	c.start("worker")
	alice, token := c.user("alice")
	sio := startSIO(t)
	sio.connect("alice", api.url, token, true)
	image := fixture(t, "valid/video-001.q50.420.jpeg")

	accepted := uploadN(t, api.url, token, image, 2, 10)
	ai.waitCalls(t, 4, 60*time.Second)
	killed := time.Now()
	fd.kill()
	during := uploadDuringOutage(api.url, token, image)
	time.Sleep(3*time.Second - time.Since(killed))
	fd.start()
	restarted := time.Now()
	outage, ids := checkOutageUpload(t, during)
	accepted = append(accepted, ids...)
	accepted = append(accepted, uploadUntilAccepted(t, api.url, token, image, 10, time.Minute)...)

	docs, settled := c.waitSettled(accepted, 150*time.Second)
	checkNothingElse(t, docs, accepted)
	want := c.checkStored(docs, map[string][]string{alice: {"alice"}}, true)
	failed := 0
	for _, d := range docs {
		if d.Status == "failed" {
			failed++
		}
	}
	c.waitEvents(sio, docs, 90*time.Second)
	checkClientEvents(t, sio, want, true)
	c.stopAll()
	t.Logf("FerretDB kill -9 and restart, down %v; an upload sent while it was down: %s; all %d accepted assets final (%d failed) with events sent %v after the restart",
		restarted.Sub(killed).Round(time.Millisecond), outage, len(accepted), failed, settled.Sub(restarted).Round(time.Millisecond))
}

// testAPICutFromRedis: the api's connections to Redis break for 2 s (a
// partition: Redis and the worker carry on) while jobs finish, so their
// events are published while the api cannot hear them. Each must still
// reach its owner's socket on that api (DESIGN §3: an event may repeat,
// never vanish). The client stays connected throughout, so only the
// service can make up what the api's subscription missed.
func testAPICutFromRedis(t *testing.T, bin string) {
	const total = 10
	ai := newHoldAI(t, 50*time.Millisecond, true)
	redisURL := testenv.RedisURL(t)
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartProxy(t, opt.Addr)
	uri, db := testenv.MongoURI(t)
	c := newCluster(t, bin, redisURL, uri, db, ai.fakeAI, map[string]string{"WORKER_CONCURRENCY": "16"})
	api := c.startWith("api", map[string]string{"REDIS_URL": fmt.Sprintf("redis://%s/%d", proxy.Addr, opt.DB)})
	c.start("worker")
	alice, token := c.user("alice")
	sio := startSIO(t)
	sio.connect("alice", api.url, token, true)

	accepted := uploadN(t, api.url, token, fixture(t, "valid/video-001.q50.420.jpeg"), 1, total)
	ai.waitCalls(t, total, 60*time.Second)
	cut := time.Now()
	proxy.Cut()
	ai.release(-1)
	docs, published := c.waitSettled(accepted, time.Minute)
	time.Sleep(2*time.Second - time.Since(cut))
	proxy.Heal()
	healed := time.Now()
	want := c.checkStored(docs, map[string][]string{alice: {"alice"}}, false)
	c.waitEvents(sio, docs, time.Minute)
	got := map[string]bool{}
	for _, e := range sio.events() {
		var ev struct{ AssetID string }
		json.Unmarshal(e.Data, &ev)
		got[ev.AssetID] = true
	}
	checkClientEvents(t, sio, want, true)
	c.stopAll()
	t.Logf("the api's Redis connections cut for %v; the worker finished and published all %d events %v into the cut; the client connected to that api got %d of them within a minute of the heal",
		healed.Sub(cut).Round(time.Millisecond), total, published.Sub(cut).Round(time.Millisecond), len(got))
}
