package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/blob/blobtest"
	"github.com/klectr/klectr/internal/blob/s3blob"
	"github.com/klectr/klectr/internal/testenv"
)

// TestCluster runs the scale-out shape of DESIGN §1 on the real binaries:
// `klectr api` and `klectr worker` processes sharing MongoDB, Redis and an
// S3 server. The throughput run goes first, before the fault runs, for its
// figures (run it alone with -run 'TestCluster/2_api' for clean ones); the
// fault runs share nothing and go in parallel after it.
func TestCluster(t *testing.T) {
	t.Parallel()
	for _, env := range []string{testenv.RedisURLEnv, testenv.MongoURIEnv, testenv.E2EDirEnv} {
		if os.Getenv(env) == "" {
			t.Skipf("set %s (see internal/testenv) to run the scale-out tests on the real binaries", env)
		}
	}
	bin := buildKlectr(t)
	t.Run("2 api + 2 workers", func(t *testing.T) { testMultiNode(t, bin) })
	t.Run("faults", func(t *testing.T) {
		for _, c := range []struct {
			name string
			test func(*testing.T, string)
		}{
			{"kill -9 of a worker mid-job", testWorkerKill},
			{"kill -9 of an api mid-upload", testAPIKill},
			{"Redis kill -9 and restart with AOF", testRedisKill},
			{"Redis FLUSHALL while assets are processing", testRedisFlush},
			{"MongoDB-wire server restart", testMongoRestart},
			{"an api cut off from Redis while events are published", testAPICutFromRedis},
		} {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				c.test(t, bin)
			})
		}
	})
}

const (
	clusterBucket     = "klectr"
	clusterBlobPrefix = "blobs/"
)

// s3Server is a real S3-protocol server (blobtest's gofakes3 on loopback)
// with one empty bucket; the test reads its objects through s3blob.
type s3Server struct {
	url   string
	blobs *s3blob.Store
}

func startS3(t *testing.T) *s3Server {
	t.Helper()
	h, err := blobtest.S3Handler(clusterBucket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	// gofakes3 writes a second header when a client aborts a multipart
	// upload (the api kill test does); net/http's complaint is noise.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	blobs, err := s3blob.New(ctx, s3blob.Config{Bucket: clusterBucket, Prefix: clusterBlobPrefix, Endpoint: srv.URL,
		AccessKeyID: "klectr-test", SecretAccessKey: "klectr-test-secret"})
	if err != nil {
		t.Fatal(err)
	}
	return &s3Server{url: srv.URL, blobs: blobs}
}

// has reports whether the blob of key is stored (BLOB_URL's prefix + key).
func (s *s3Server) has(key string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := s.blobs.Open(ctx, key)
	if err != nil {
		return false
	}
	rc.Close()
	return true
}

// objects counts the objects under the blob prefix.
func (s *s3Server) objects(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := 0
	if err := s.blobs.Walk(ctx, time.Now().Add(time.Hour), func(string) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// withDatabase puts db in the path of a mongodb:// URI, keeping its hosts
// and options.
func withDatabase(uri, db string) string {
	scheme, rest, _ := strings.Cut(uri, "://")
	hosts, opts := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		hosts = rest[:i]
		if _, q, ok := strings.Cut(rest[i:], "?"); ok {
			opts = "?" + q
		}
	}
	return scheme + "://" + hosts + "/" + db + opts
}

// cluster is one scale-out deployment: what every process shares, and the
// processes started so far.
type cluster struct {
	t      *testing.T
	bin    string
	env    map[string]string
	s3     *s3Server
	assets *mongo.Collection
	keys   *auth.Keys

	mu     sync.Mutex
	procs  []*proc
	killed map[*proc]bool
}

// newCluster prepares a deployment on redisURL, MongoDB database db of
// mongoURI, a fresh S3 server and ai; extra overrides or adds variables.
func newCluster(t *testing.T, bin, redisURL, mongoURI, db string, ai *fakeAI, extra map[string]string) *cluster {
	t.Helper()
	s3 := startS3(t)
	env := map[string]string{
		"MONGODB_URI":           withDatabase(mongoURI, db),
		"REDIS_URL":             redisURL,
		"BLOB_URL":              fmt.Sprintf("s3://%s/%s?endpoint=%s&region=us-east-1", clusterBucket, strings.TrimSuffix(clusterBlobPrefix, "/"), s3.url),
		"AWS_ACCESS_KEY_ID":     "klectr-test",
		"AWS_SECRET_ACCESS_KEY": "klectr-test-secret",
		"JWT_SECRET":            testSecret,
		"AI_SERVICE_URL":        ai.url(),
		"AI_TIMEOUT":            "20s",
		"JOB_BACKOFF":           "500ms",
		"UPLOAD_RATE":           "0",
		"LOG_LEVEL":             "info",
	}
	for k, v := range extra {
		env[k] = v
	}
	client, err := mongo.Connect(options.Client().ApplyURI(mongoURI).SetServerSelectionTimeout(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		client.Disconnect(ctx)
	})
	return &cluster{t: t, bin: bin, env: env, s3: s3, assets: client.Database(db).Collection("assets"),
		keys: auth.NewKeys([]byte(testSecret), nil), killed: map[*proc]bool{}}
}

// user returns a user id unique to this run and its token. Pub/sub channels
// are global to a Redis server, so tests sharing one must not share users.
func (c *cluster) user(name string) (id, token string) {
	id = name + "-" + strings.ToLower(ulid.Make().String()[20:])
	token, err := c.keys.Sign(id, "", time.Hour)
	if err != nil {
		c.t.Fatal(err)
	}
	return id, token
}

// start runs `klectr <role>` (api or worker) with the cluster's variables,
// its own ADDR and DATA_DIR, and waits until it is up.
func (c *cluster) start(role string) *proc {
	c.t.Helper()
	return c.startWith(role, nil)
}

// startWith is start with some of the cluster's variables replaced.
func (c *cluster) startWith(role string, extra map[string]string) *proc {
	c.t.Helper()
	env := map[string]string{"ADDR": freeAddr(c.t), "DATA_DIR": c.t.TempDir()}
	for k, v := range c.env {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	p := startNode(c.t, c.bin, role, env)
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// startNode runs `klectr role` with exactly env (plus GORACE and JSON logs)
// and waits for its "listening" line and, for a worker, "worker started".
// `klectr worker` also listens on ADDR (/healthz, /readyz, /metrics).
func startNode(t *testing.T, bin, role string, env map[string]string) *proc {
	t.Helper()
	cmd := exec.Command(bin, role)
	cmd.Env = []string{"GORACE=halt_on_error=0", "LOG_FORMAT=json"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, logs: newLineLog(), done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.logs.read(stderr)
		cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(p.kill)
	if role == "worker" {
		rec, err := p.logs.wait(60*time.Second, hasMsg("worker started"))
		if err != nil {
			p.kill()
			t.Fatalf("klectr worker did not start: %v\n%s", err, p.logs.text())
		}
		p.working = logTime(t, rec)
	}
	rec, err := p.logs.wait(60*time.Second, hasMsg("listening"))
	if errors.Is(err, errLogClosed) {
		t.Fatalf("klectr %s exited at start:\n%s", role, p.logs.text())
	}
	if err != nil {
		p.kill()
		t.Fatalf("klectr %s did not listen on ADDR (issue 8 §6: every process serves /healthz, /readyz and /metrics): %v\n%s", role, err, p.logs.text())
	}
	p.listened = logTime(t, rec)
	addr, _ := rec["addr"].(string)
	p.url = "http://" + addr
	return p
}

// kill9 kills p with SIGKILL and waits until it is gone.
func (c *cluster) kill9(p *proc) {
	c.mu.Lock()
	c.killed[p] = true
	c.mu.Unlock()
	p.kill()
	p.checkClean()
}

// stopAll sends SIGTERM to every process still running and checks that
// each exits 0 without a race report or a panic.
func (c *cluster) stopAll() {
	c.t.Helper()
	c.mu.Lock()
	var procs []*proc
	for _, p := range c.procs {
		if !c.killed[p] {
			procs = append(procs, p)
		}
	}
	c.mu.Unlock()
	for _, p := range procs {
		if !p.exited() {
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range procs {
		if code := p.wait(40 * time.Second); code != 0 {
			c.t.Errorf("klectr %s exited %d on SIGTERM:\n%s", p.cmd.Args[1], code, p.logs.text())
		}
		p.checkClean()
	}
}

// storedAssetDoc is an asset document as the MongoDB store keeps it
// (fields in the JSON API's names; eventId and eventPending are the outbox).
type storedAssetDoc struct {
	ID              string `bson:"_id"`
	UserID          string `bson:"userId"`
	Status          string `bson:"status"`
	ProcessingJobID string `bson:"processingJobId"`
	BlobKey         string `bson:"blobKey"`
	Attempts        int    `bson:"attempts"`
	EventID         string `bson:"eventId"`
	EventPending    bool   `bson:"eventPending"`
	Error           *struct {
		Code string `bson:"code"`
	} `bson:"error"`
}

// docs reads every asset document of the deployment.
func (c *cluster) docs() (map[string]storedAssetDoc, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cur, err := c.assets.Find(ctx, bson.D{})
	if err != nil {
		return nil, err
	}
	var all []storedAssetDoc
	if err := cur.All(ctx, &all); err != nil {
		return nil, err
	}
	out := make(map[string]storedAssetDoc, len(all))
	for _, d := range all {
		out[d.ID] = d
	}
	return out, nil
}

// waitSettled polls the store until it holds every id of accepted and every
// asset in it is final with its event sent (no outbox mark left), and
// returns the assets and when that was first seen. Read errors are retried:
// a fault test may be polling through a server's restart.
func (c *cluster) waitSettled(accepted []string, timeout time.Duration) (map[string]storedAssetDoc, time.Time) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		docs, err := c.docs()
		if err == nil {
			missing, processing, owed := 0, 0, 0
			for _, id := range accepted {
				if _, ok := docs[id]; !ok {
					missing++
				}
			}
			for _, d := range docs {
				switch {
				case d.Status == "processing":
					processing++
				case d.EventPending:
					owed++
				}
			}
			if missing+processing+owed == 0 {
				return docs, time.Now()
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("after %v: of %d accepted assets %d are not in the store; of %d stored, %d still processing and %d with an event owed\n%s",
					timeout, len(accepted), missing, len(docs), processing, owed, c.logTail())
			}
		} else if time.Now().After(deadline) {
			c.t.Fatalf("after %v the store cannot be read: %v", timeout, err)
		}
		time.Sleep(200 * time.Millisecond) // polling a condition
	}
}

// logTail is the last lines of each process, for a failure message.
func (c *cluster) logTail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for i, p := range c.procs {
		lines := strings.Split(p.logs.text(), "\n")
		fmt.Fprintf(&b, "--- %s #%d (last %d lines)\n%s\n", p.cmd.Args[1], i, min(len(lines), 15), strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

// checkStored checks the invariants of every stored asset: owned by a user
// of owners, final (draft unless failedOK), its blob in the S3 bucket, its
// event id recorded. It returns the events each socket must receive.
func (c *cluster) checkStored(docs map[string]storedAssetDoc, sockets map[string][]string, failedOK bool) map[string]wantEvent {
	c.t.Helper()
	want := map[string]wantEvent{}
	for id, d := range docs {
		if _, ok := sockets[d.UserID]; !ok {
			c.t.Errorf("asset %s belongs to %q, a user this test never had", id, d.UserID)
		}
		if d.Status != "draft" && (d.Status != "failed" || !failedOK) {
			c.t.Errorf("asset %s ended %s (error %+v)", id, d.Status, d.Error)
		}
		if d.BlobKey == "" || !c.s3.has(d.BlobKey) {
			c.t.Errorf("asset %s is stored without its blob %q in the S3 bucket", id, d.BlobKey)
		}
		if d.EventID == "" {
			c.t.Errorf("asset %s is final without an event id", id)
		}
		status := map[string]string{"draft": "completed", "failed": "failed"}[d.Status]
		want[id] = wantEvent{User: d.UserID, Status: status, EventID: d.EventID, Sockets: sockets[d.UserID]}
	}
	return want
}

// waitEvents waits until the client has received an event for every asset
// of docs. On timeout it fails t naming each missing asset with what the
// processes logged about it, and returns, so that checkClientEvents still
// reports the rest.
func (c *cluster) waitEvents(sio *sioClient, docs map[string]storedAssetDoc, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := map[string]bool{}
		for _, e := range sio.events() {
			var ev struct{ AssetID string }
			json.Unmarshal(e.Data, &ev)
			got[ev.AssetID] = true
		}
		var missing []string
		for id := range docs {
			if !got[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			var b strings.Builder
			for _, id := range missing[:min(len(missing), 5)] {
				fmt.Fprintf(&b, "\n  asset %s (event %s):", id, docs[id].EventID)
				for _, line := range c.linesAbout(id) {
					fmt.Fprintf(&b, "\n    %s", line)
				}
			}
			c.t.Errorf("after %v the Socket.IO client has no event for %d of %d assets, whose events the store marks sent:%s",
				timeout, len(missing), len(docs), b.String())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// linesAbout returns every process's log lines that mention s.
func (c *cluster) linesAbout(s string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for i, p := range c.procs {
		for _, line := range strings.Split(p.logs.text(), "\n") {
			if strings.Contains(line, s) {
				out = append(out, fmt.Sprintf("%s #%d: %.400s", p.cmd.Args[1], i, line))
			}
		}
	}
	return out
}

// finalsBy returns the assets whose final state the process recorded (its
// "asset final" log lines).
func finalsBy(p *proc) map[string]bool {
	out := map[string]bool{}
	for _, r := range p.logs.records(hasMsg("asset final")) {
		id, _ := r["assetId"].(string)
		out[id] = true
	}
	return out
}

// upload posts n copies of image to analyze-queue and returns the status
// and the accepted asset ids. The body is written in chunks of chunk bytes
// with pause between them (0: at once), so that a request can be caught
// mid-body. It does not touch t.
func upload(ctx context.Context, baseURL, token string, image []byte, n, chunk int, pause time.Duration) (int, []string, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for i := range n {
		w, err := mw.CreateFormFile("images", fmt.Sprintf("card-%d.jpg", i))
		if err != nil {
			return 0, nil, err
		}
		w.Write(image)
	}
	mw.Close()
	var r io.Reader = &body
	if chunk > 0 {
		pr, pw := io.Pipe()
		go func() {
			b := body.Bytes()
			for len(b) > 0 && ctx.Err() == nil {
				k := min(chunk, len(b))
				if _, err := pw.Write(b[:k]); err != nil {
					return
				}
				b = b[k:]
				time.Sleep(pause)
			}
			pw.CloseWithError(ctx.Err())
		}()
		r = pr
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/api/assets/analyze-queue", r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return resp.StatusCode, nil, fmt.Errorf("upload: %d %s", resp.StatusCode, b)
	}
	ids, err := acceptedIDs(resp, nil)
	return resp.StatusCode, ids, err
}

// uploadUntilAccepted retries an upload refused with 503 (a dependency
// coming back) until it is accepted or timeout passes.
func uploadUntilAccepted(t *testing.T, baseURL, token string, image []byte, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		status, ids, err := upload(ctx, baseURL, token, image, n, 0, 0)
		cancel()
		if err == nil {
			return ids
		}
		if (status != http.StatusServiceUnavailable && status != 0) || time.Now().After(deadline) {
			t.Fatalf("upload after the fault: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// slowAI answers every call with 200 after delay.
func slowAI(t *testing.T, delay time.Duration) *fakeAI {
	return newFakeAI(t, func(r *http.Request, _ string, seq, call int) (int, string) {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return 0, ""
		}
		return http.StatusOK, fmt.Sprintf(`{"label":"card","seq":%d,"call":%d}`, seq, call)
	})
}

// probe GETs url and returns the status and up to 64 KiB of the body.
func probe(url string) (int, string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), err
}

// testMultiNode: 2 api + 2 worker processes on MongoDB + Redis + S3 with an
// AI answering in 50 ms. All uploads go through api B; alice's socket is on
// api A and bob's on api B. Every asset ends draft with one AI call, both
// workers work, each event reaches its owner's socket once and no other.
func testMultiNode(t *testing.T, bin string) {
	uploads, concurrency := 500, 20
	if raceBuild {
		uploads = 100
	}
	uri, db := testenv.MongoURI(t)
	ai := slowAI(t, 50*time.Millisecond)
	c := newCluster(t, bin, testenv.RedisURL(t), uri, db, ai, nil)
	apiA, apiB := c.start("api"), c.start("api")
	w1, w2 := c.start("worker"), c.start("worker")

	// Every process answers the probes; a worker serves no API route.
	for _, p := range []*proc{apiA, apiB, w1, w2} {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			if status, body, err := probe(p.url + path); status != http.StatusOK || err != nil {
				t.Errorf("klectr %s GET %s: %d %v %.300s", p.cmd.Args[1], path, status, err, body)
			}
		}
	}
	for _, w := range []*proc{w1, w2} {
		if status, _, err := probe(w.url + "/api/assets"); status != http.StatusNotFound && status != http.StatusMethodNotAllowed || err != nil {
			t.Errorf("klectr worker GET /api/assets: %d %v; a worker serves no API route", status, err)
		}
	}

	alice, aliceToken := c.user("alice")
	bob, bobToken := c.user("bob")
	sio := startSIO(t)
	sio.connect("alice@A", apiA.url, aliceToken, true)
	sio.connect("bob@B", apiB.url, bobToken, true)

	image := fixture(t, "valid/video-001.q50.420.jpeg")
	type result struct {
		user string
		ids  []string
		err  error
	}
	work := make(chan int)
	results := make(chan result, uploads)
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for i := range work {
				user, token := alice, aliceToken
				if i%5 == 4 {
					user, token = bob, bobToken
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				_, ids, err := upload(ctx, apiB.url, token, image, 1, 0, 0)
				cancel()
				results <- result{user, ids, err}
			}
		})
	}
	for i := range uploads {
		work <- i
	}
	close(work)
	wg.Wait()
	accepted := time.Since(start)
	close(results)
	owner := map[string]string{}
	var ids []string
	for r := range results {
		if r.err != nil {
			t.Fatalf("upload through api B: %v", r.err)
		}
		for _, id := range r.ids {
			owner[id] = r.user
			ids = append(ids, id)
		}
	}
	docs, settled := c.waitSettled(ids, 3*time.Minute)
	allFinal := settled.Sub(start)
	if len(docs) != uploads {
		t.Errorf("%d assets in the store, %d uploads accepted", len(docs), uploads)
	}
	want := c.checkStored(docs, map[string][]string{alice: {"alice@A"}, bob: {"bob@B"}}, false)
	for id, d := range docs {
		if d.UserID != owner[id] || d.Attempts != 1 {
			t.Errorf("asset %s: owner %q, %d attempts; want %q after 1", id, d.UserID, d.Attempts, owner[id])
		}
		if n := len(ai.callsOf(id)); n != 1 {
			t.Errorf("asset %s: %d AI calls without any fault; want 1", id, n)
		}
	}

	// Reads on the other node; no user reads another's asset.
	var aliceAsset, bobAsset string
	for id, u := range owner {
		if u == alice {
			aliceAsset = id
		} else {
			bobAsset = id
		}
	}
	var a assetReply
	if status, err := getJSON(apiA.url, "/api/assets/"+bobAsset, bobToken, &a); status != http.StatusOK || err != nil || a.Status != "draft" {
		t.Errorf("bob reads his asset through api A: %d %v %+v", status, err, a)
	}
	if status, _ := getJSON(apiA.url, "/api/assets/"+aliceAsset, bobToken, &a); status != http.StatusNotFound {
		t.Errorf("bob reads alice's asset through api A: %d; want 404", status)
	}

	// Alice's socket on api A got the events of both workers' jobs.
	f1, f2 := finalsBy(w1), finalsBy(w2)
	aliceBy := [2]int{}
	for id, u := range owner {
		if u == alice && f1[id] {
			aliceBy[0]++
		} else if u == alice && f2[id] {
			aliceBy[1]++
		}
	}
	if aliceBy[0] == 0 || aliceBy[1] == 0 || len(f1)+len(f2) != uploads {
		t.Errorf("worker 1 finished %d assets (%d of alice's), worker 2 %d (%d); want both working, on alice's too, and %d in all",
			len(f1), aliceBy[0], len(f2), aliceBy[1], uploads)
	}
	c.waitEvents(sio, docs, time.Minute)
	checkClientEvents(t, sio, want, false)
	c.stopAll()

	calls := ai.all()
	sort.Slice(calls, func(i, j int) bool { return calls[i].At.Before(calls[j].At) })
	var aiSpan time.Duration
	if len(calls) > 1 {
		aiSpan = calls[len(calls)-1].At.Sub(calls[0].At)
	}
	t.Logf("2 api + 2 workers (WORKER_CONCURRENCY 16 each) on MongoDB-wire + Redis + S3, AI at 50 ms: %d uploads of one image at concurrency %d through api B "+
		"accepted in %v (%.0f uploads/s); all final with events sent %v after the first (%.0f jobs/s end to end; AI calls spread over %v, %.0f calls/s); "+
		"worker 1 did %d jobs, worker 2 %d",
		uploads, concurrency, accepted.Round(time.Millisecond), float64(uploads)/accepted.Seconds(),
		allFinal.Round(time.Millisecond), float64(uploads)/allFinal.Seconds(), aiSpan.Round(time.Millisecond), float64(len(calls))/aiSpan.Seconds(),
		len(f1), len(f2))
}
