package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/testenv"
)

// scaleOutEnv is the environment of a process on the scale-out shape, on a
// Redis database and a MongoDB database of t's own, with blobs in a
// directory every process of the test shares.
func scaleOutEnv(t *testing.T) map[string]string {
	t.Helper()
	redisURL := testenv.RedisURL(t)
	uri, db := testenv.MongoURI(t)
	return map[string]string{
		"REDIS_URL":   redisURL,
		"MONGODB_URI": strings.TrimRight(uri, "/") + "/" + db,
		"BLOB_URL":    "file://" + t.TempDir(),
		"JWT_SECRET":  strings.Repeat("k", 32),
	}
}

// An api and a worker process on MongoDB + Redis: an upload through the api
// is analysed by the worker; both answer /readyz by dependency; the admin
// API and `klectr jobs` work on this shape; deleting a pending job fails its
// asset.
func TestScaleOutAPIAndWorker(t *testing.T) {
	t.Parallel()
	env := scaleOutEnv(t)
	api := startMode(t, modeAPI, env)
	worker := startMode(t, modeWorker, env)
	for _, s := range []*server{api, worker} {
		resp, b := s.do("GET", "/readyz", "", nil, "")
		var body struct{ Checks map[string]string }
		json.Unmarshal(b, &body)
		if resp.StatusCode != 200 || len(body.Checks) != 4 || body.Checks["store"] != "ok" || body.Checks["queue"] != "ok" ||
			body.Checks["bus"] != "ok" || body.Checks["blobs"] != "ok" {
			t.Fatalf("readyz: %d %s", resp.StatusCode, b)
		}
	}
	ids := api.uploadOK(api.alice, "valid/video-001.png", "valid/go-turns-two-280x360.jpeg")
	for _, id := range ids {
		if a := api.waitFinal(api.alice, id); a.Status != "draft" {
			t.Fatalf("asset %s: %+v", id, a)
		}
	}
	admin, _ := api.keys.Sign("ops", "admin", time.Hour)
	// The queue records a job's end a moment after its asset is final.
	if c := waitCounts(t, api.url, admin, 10*time.Second, func(c map[string]int) bool { return c["completed"] == 2 }); c["completed"] != 2 {
		t.Fatalf("admin queues: %v, want 2 completed", c)
	}

	// With the worker stopped, a job stays pending; deleting it fails its
	// asset, and `klectr jobs list` reads the same Redis.
	if code := worker.shutdown(); code != 0 {
		t.Fatalf("worker exit %d", code)
	}
	ids = api.uploadOK(api.alice, "valid/video-001.png")
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"jobs", "list", "-state", "pending"}, envOf(env), &out, &errb); code != 0 || !strings.Contains(out.String(), ids[0]) {
		t.Fatalf("jobs list: %d %s %s", code, out.String(), errb.String())
	}
	var line struct{ ID string }
	json.Unmarshal(out.Bytes(), &line)
	if resp, b := api.do("DELETE", "/api/admin/jobs/"+line.ID, admin, nil, ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d %s", resp.StatusCode, b)
	}
	if a := api.waitFinal(api.alice, ids[0]); a.Status != "failed" || a.Error == nil || a.Error.Code != "job_deleted" {
		t.Fatalf("asset of the deleted job: %+v", a)
	}
}

// Start-up stops at once, naming the variable, when MongoDB or Redis does
// not answer.
func TestScaleOutUnreachableBackendsStopStartUp(t *testing.T) {
	t.Parallel()
	env := scaleOutEnv(t)
	for name, change := range map[string]map[string]string{
		"MONGODB_URI": {"MONGODB_URI": "mongodb://127.0.0.1:1/klectr?serverSelectionTimeoutMS=500&connectTimeoutMS=500"},
		"REDIS_URL":   {"REDIS_URL": "redis://127.0.0.1:1/0"},
	} {
		e := map[string]string{"DATA_DIR": t.TempDir(), "ADDR": "127.0.0.1:0"}
		for k, v := range env {
			e[k] = v
		}
		for k, v := range change {
			e[k] = v
		}
		var errb lockedBuffer
		start := time.Now()
		code := Run(context.Background(), []string{"serve"}, envOf(e), &bytes.Buffer{}, &errb)
		if code != 1 || !strings.Contains(errb.String(), name) || time.Since(start) > 25*time.Second {
			t.Errorf("%s unreachable: exit %d after %v:\n%s", name, code, time.Since(start), errb.String())
		}
	}
}

// A worker on a Redis that can lose jobs says so once at start-up, naming
// each setting, and runs anyway.
func TestScaleOutWorkerWarnsAboutAnUnsafeRedis(t *testing.T) {
	t.Parallel()
	env := scaleOutEnv(t)
	bin := os.Getenv("KLECTR_TEST_REDIS_BIN")
	if bin == "" {
		t.Skip("set KLECTR_TEST_REDIS_BIN to start a Redis without persistence")
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	srv := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--maxmemory-policy", "allkeys-lru", "--dir", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	env["REDIS_URL"] = "redis://" + addr + "/0"
	waitFor(t, 10*time.Second, "the Redis to answer", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	w := startMode(t, modeWorker, env)
	logs := w.logs.String()
	for _, setting := range []string{"redis appendonly", "redis maxmemory-policy"} {
		if n := strings.Count(logs, setting); n != 1 {
			t.Errorf("%q named %d times at start-up, want once:\n%s", setting, n, logs)
		}
	}
}

// Pub/sub channels are per server, keys per database: the channel follows
// the database.
func TestEventChannelFollowsTheDatabase(t *testing.T) {
	t.Parallel()
	for url, want := range map[string]string{
		"redis://127.0.0.1:6379":            "klectr:0:events",
		"redis://:secret@127.0.0.1:6379/7":  "klectr:7:events",
		"rediss://user:pw@redis.example/12": "klectr:12:events",
	} {
		if got := eventChannel(url); got != want {
			t.Errorf("eventChannel(%q) = %q, want %q", url, got, want)
		}
	}
}
