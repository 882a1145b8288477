package httpapi_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/mongostore"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/idempotency/mongokeys"
	"github.com/klectr/klectr/internal/intake/splitintake"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/queue/redisqueue"
	"github.com/klectr/klectr/internal/testenv"
)

// A storm of one key spread over two api nodes of the scale-out shape
// (MongoDB-wire server for assets and keys, Redis for jobs): one request
// creates the asset and its job, every other gets its 202 replayed or 409.
func TestUploadKeyStormAcrossNodes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	uri, name := testenv.MongoURI(t)
	redisURL := testenv.RedisURL(t)
	ms, err := mongostore.New(ctx, mongostore.Config{URI: uri, Database: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close(context.Background()) })
	rq, err := redisqueue.New(ctx, redisqueue.Config{URL: redisURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rq.Close() })
	var nodes []*env
	for range 2 {
		keys, err := mongokeys.Open(ctx, uri, name) // each node its own connection
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { keys.Close() })
		in := splitintake.New(ms, rq, keys, func() string { return ulid.Make().String() }, slog.New(slog.DiscardHandler))
		nodes = append(nodes, newEnv(t, func(d *httpapi.Deps) {
			d.Intake, d.Assets, d.Now = in, ms, time.Now
		}))
	}
	tok := nodes[0].token(t, "u1", "")
	body := oneFile(t, validFixtures(t)[0], "a.jpg")

	const n = 16
	statuses := make([]int, n)
	bodies := make([][]byte, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		node := nodes[i%2]
		wg.Go(func() {
			<-start
			req, _ := http.NewRequest(http.MethodPost, node.srv.URL+"/api/assets/analyze-queue", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", multipartType)
			req.Header.Set("Idempotency-Key", `"storm-1"`)
			res, err := node.srv.Client().Do(req)
			if err != nil {
				return
			}
			defer res.Body.Close()
			bodies[i], _ = io.ReadAll(res.Body)
			statuses[i] = res.StatusCode
		})
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the requests did not finish in 60 s")
	}
	var accepted []byte
	conflicts := 0
	for i, st := range statuses {
		switch st {
		case http.StatusAccepted:
			if accepted != nil && !bytes.Equal(accepted, bodies[i]) {
				t.Fatalf("two different 202 bodies: %s and %s", accepted, bodies[i])
			}
			accepted = bodies[i]
		case http.StatusConflict:
			conflicts++
		default:
			t.Fatalf("request %d: %d %s", i, st, bodies[i])
		}
	}
	t.Logf("%d requests over 2 nodes: %d accepted (one created, the rest replayed), %d conflicts", n, n-conflicts, conflicts)
	p, err := ms.List(ctx, "u1", asset.ListQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	counts, err := rq.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Assets) != 1 || counts[queue.Pending] != 1 {
		t.Fatalf("%d assets and %d pending jobs, want 1 each", len(p.Assets), counts[queue.Pending])
	}
	for i, node := range nodes {
		if r := node.keyedUpload(t, tok, `storm-1`, body); !bytes.Equal(r.Body, accepted) {
			t.Fatalf("a retry on node %d after the storm: %d %s", i, r.StatusCode, r.Body)
		}
	}
	if blobs := len(nodes[0].blobFiles(t)) + len(nodes[1].blobFiles(t)); blobs != 1 {
		t.Fatalf("%d blobs kept over both nodes, want 1", blobs)
	}
}

// keyedUpload posts body as multipart/form-data for token with an
// Idempotency-Key header of key.
func (e *env) keyedUpload(t *testing.T, token, key string, body []byte) reply {
	t.Helper()
	req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", token, bytes.NewReader(body))
	req.Header.Set("Content-Type", multipartType)
	req.Header.Set("Idempotency-Key", key)
	return e.do(t, req)
}
