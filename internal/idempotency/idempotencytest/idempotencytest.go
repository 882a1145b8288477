// Package idempotencytest is the conformance suite of idempotency.Submitter:
// every deployment shape's keyed intake runs TestSubmitter on its real
// stores.
package idempotencytest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/idempotency"
)

// Env is one fresh intake and a way to count what it stored.
type Env struct {
	Submitter idempotency.Submitter
	// Assets returns how many assets of userID are stored.
	Assets func(ctx context.Context, userID string) (int, error)
}

// TestSubmitter runs the suite; newEnv returns a fresh, empty Env.
func TestSubmitter(t *testing.T, newEnv func(t *testing.T) Env) {
	t.Run("RepeatReplaysAndCreatesNothing", func(t *testing.T) { t.Parallel(); testRepeat(t, newEnv(t)) })
	t.Run("OtherBodyIsRefused", func(t *testing.T) { t.Parallel(); testMismatch(t, newEnv(t)) })
	t.Run("ConcurrentDuplicatesCreateOnce", func(t *testing.T) { t.Parallel(); testConcurrent(t, newEnv(t)) })
	t.Run("ExpiredKeyIsFree", func(t *testing.T) { t.Parallel(); testExpiry(t, newEnv(t)) })
	t.Run("KeysAreScopedToTheirUser", func(t *testing.T) { t.Parallel(); testUsers(t, newEnv(t)) })
	t.Run("FailedSubmissionKeepsNothing", func(t *testing.T) { t.Parallel(); testFailed(t, newEnv(t)) })
}

// t0 is the suite's clock: the records' liveness is decided by the claims'
// times, so expiry needs no waiting.
var t0 = time.Now().UTC().Truncate(time.Millisecond)

func newAssets(user string, n int) []*asset.Asset {
	out := make([]*asset.Asset, n)
	for i := range out {
		b := make([]byte, 16)
		rand.Read(b)
		out[i] = &asset.Asset{ID: ulid.Make().String(), UserID: user, Status: asset.StatusProcessing,
			ProcessingJobID: ulid.Make().String(), Filename: fmt.Sprintf("card%d.png", i), ContentType: "image/png",
			Size: 10, SHA256: hex.EncodeToString(b) + hex.EncodeToString(b), Width: 1, Height: 1,
			BlobKey: hex.EncodeToString(b), CreatedAt: t0, UpdatedAt: t0}
	}
	return out
}

func claim(user, key, body string, at time.Time) idempotency.Claim {
	fp := idempotency.Fingerprint(user, []idempotency.File{{Name: body, Size: 1, SHA256: "00"}})
	return idempotency.Claim{UserID: user, Key: key, Fingerprint: fp,
		Response: []byte(`{"assets":["` + body + `"]}`), At: at}
}

func count(t *testing.T, e Env, user string, want int) {
	t.Helper()
	n, err := e.Assets(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("%s has %d assets, want %d", user, n, want)
	}
}

func mustCreate(t *testing.T, e Env, c idempotency.Claim, n int) {
	t.Helper()
	r, err := e.Submitter.SubmitOnce(context.Background(), newAssets(c.UserID, n), c)
	if err != nil || r != nil {
		t.Fatalf("first submission of the key: record %+v, err %v; want it created", r, err)
	}
}

func mustReplay(t *testing.T, e Env, c idempotency.Claim, want []byte) {
	t.Helper()
	r, err := e.Submitter.SubmitOnce(context.Background(), newAssets(c.UserID, 1), c)
	if err != nil || r == nil {
		t.Fatalf("repeat: record %v, err %v; want a replay", r, err)
	}
	if string(r.Response) != string(want) || r.Fingerprint != c.Fingerprint || r.UserID != c.UserID || r.Key != c.Key {
		t.Fatalf("replayed %+v, want response %s", r, want)
	}
}

func testRepeat(t *testing.T, e Env) {
	c := claim("u1", "k1", "body", t0)
	mustCreate(t, e, c, 2)
	count(t, e, "u1", 2)
	for range 3 {
		later := c
		later.At = t0.Add(time.Hour)
		later.Response = []byte(`{"would":"differ"}`)
		mustReplay(t, e, later, c.Response)
	}
	count(t, e, "u1", 2)
}

func testMismatch(t *testing.T, e Env) {
	c := claim("u1", "k1", "body", t0)
	mustCreate(t, e, c, 1)
	other := claim("u1", "k1", "another body", t0.Add(time.Minute))
	if r, err := e.Submitter.SubmitOnce(context.Background(), newAssets("u1", 1), other); !errors.Is(err, idempotency.ErrReused) {
		t.Fatalf("same key, other body: record %v, err %v; want ErrReused", r, err)
	}
	count(t, e, "u1", 1)
	mustReplay(t, e, c, c.Response) // the first request's record is untouched
}

func testConcurrent(t *testing.T, e Env) {
	const n = 24
	c := claim("u1", "storm", "body", t0)
	var (
		wg                        sync.WaitGroup
		mu                        sync.Mutex
		created, replayed, flying int
		errs                      []error
	)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			r, err := e.Submitter.SubmitOnce(context.Background(), newAssets("u1", 3), c)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && r == nil:
				created++
			case err == nil && string(r.Response) == string(c.Response):
				replayed++
			case errors.Is(err, idempotency.ErrInFlight):
				flying++
			default:
				errs = append(errs, fmt.Errorf("record %v, err %w", r, err))
			}
		})
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("concurrent submissions did not finish in 60 s")
	}
	t.Logf("%d submissions of one key: %d created, %d replayed, %d in flight", n, created, replayed, flying)
	if len(errs) > 0 || created != 1 {
		t.Fatalf("created %d times (want 1); unexpected: %v", created, errs)
	}
	count(t, e, "u1", 3)
	mustReplay(t, e, c, c.Response)
}

func testExpiry(t *testing.T, e Env) {
	c := claim("u1", "k1", "body", t0)
	mustCreate(t, e, c, 1)
	last := c
	last.At = c.ExpiresAt().Add(-time.Millisecond)
	mustReplay(t, e, last, c.Response)
	// From ExpiresAt on the key is free, for any body.
	after := claim("u1", "k1", "another body", c.ExpiresAt())
	mustCreate(t, e, after, 1)
	count(t, e, "u1", 2)
	later := after
	later.At = after.At.Add(time.Hour)
	mustReplay(t, e, later, after.Response)
}

func testUsers(t *testing.T, e Env) {
	a := claim("u1", "shared", "body", t0)
	b := claim("u2", "shared", "body", t0)
	mustCreate(t, e, a, 1)
	mustCreate(t, e, b, 2)
	count(t, e, "u1", 1)
	count(t, e, "u2", 2)
	mustReplay(t, e, a, a.Response)
	mustReplay(t, e, b, b.Response)
	// A user id that prefixes another's cannot reach its key.
	mustCreate(t, e, claim("u", "1/shared", "body", t0), 1)
	mustCreate(t, e, claim("u1/", "shared", "body", t0), 1)
}

func testFailed(t *testing.T, e Env) {
	ctx := context.Background()
	taken := newAssets("u1", 1)
	mustCreateAssets(t, e, claim("u1", "first", "first", t0), taken)
	// The second asset's id is taken: the intake refuses the whole upload.
	bad := append(newAssets("u1", 1), taken[0].Clone())
	bad[1].BlobKey = "ffffffffffffffffffffffffffffffff"
	c := claim("u1", "k1", "body", t0)
	if r, err := e.Submitter.SubmitOnce(ctx, bad, c); err == nil || r != nil {
		t.Fatalf("a submission the store refuses: record %v, err %v", r, err)
	}
	count(t, e, "u1", 1)
	// Nothing was kept under the key: the same key and body go through.
	mustCreate(t, e, c, 2)
	count(t, e, "u1", 3)
	mustReplay(t, e, c, c.Response)
}

func mustCreateAssets(t *testing.T, e Env, c idempotency.Claim, as []*asset.Asset) {
	t.Helper()
	if r, err := e.Submitter.SubmitOnce(context.Background(), as, c); err != nil || r != nil {
		t.Fatalf("record %v, err %v; want created", r, err)
	}
}
