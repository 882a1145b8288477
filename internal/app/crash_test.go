package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/klectr/klectr/internal/auth"
)

// TestBinary runs the real klectr binary as a subprocess; it is built once
// for its subtests.
func TestBinary(t *testing.T) {
	t.Parallel()
	bin := buildKlectr(t)
	t.Run("kill -9 during processing, then restart", func(t *testing.T) {
		t.Parallel()
		testCrashRestart(t, bin)
	})
	t.Run("kill -9 during a last attempt, then restart", func(t *testing.T) {
		t.Parallel()
		testCrashOnLastAttempt(t, bin)
	})
	t.Run("SIGTERM lets the running job and the upload in flight finish", func(t *testing.T) {
		t.Parallel()
		testGracefulStop(t, bin)
	})
	t.Run("a socket cut across a restart recovers every missed event", func(t *testing.T) {
		t.Parallel()
		testRecoveryAcrossRestart(t, bin)
	})
}

const testSecret = "crash-test-secret-of-32-bytes-or-more"

func baseEnv(t *testing.T, ai *fakeAI, dataDir string) map[string]string {
	return map[string]string{
		"ADDR":           freeAddr(t),
		"DATA_DIR":       dataDir,
		"JWT_SECRET":     testSecret,
		"AI_SERVICE_URL": ai.url(),
		"AI_TIMEOUT":     "20s",
		"JOB_BACKOFF":    "50ms",
		"LOG_LEVEL":      "info",
	}
}

// testCrashRestart: klectr serve with a slow AI is killed with SIGKILL while
// jobs are in the AI call, then started again on the same data directory
// with an AI that answers at once. Every accepted asset must end draft and
// its asset_processed event must be sent: seen by the official Socket.IO
// client when KLECTR_E2E_DIR is set, and in any case no event may be left
// owed in the store's outbox.
func testCrashRestart(t *testing.T, bin string) {
	const (
		requests    = 3
		perRequest  = 8
		total       = requests * perRequest
		concurrency = 4
	)
	restarted := make(chan struct{}) // closed when the second process starts
	answer := make(chan struct{})    // closed when the second process's answers may go out
	ai := newFakeAI(t, func(r *http.Request, _ string, _, _ int) (int, string) {
		select {
		case <-restarted:
			select {
			case <-answer:
			case <-r.Context().Done():
				return 0, ""
			}
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
			return 0, ""
		}
		return http.StatusOK, `{"label":"card"}`
	})
	dataDir := t.TempDir()
	env := baseEnv(t, ai, dataDir)
	env["WORKER_CONCURRENCY"] = "4"
	keys := auth.NewKeys([]byte(testSecret), nil)
	alice, _ := keys.Sign("alice", "", time.Hour)
	admin, _ := keys.Sign("ops", "admin", time.Hour)
	sio := startSIO(t)

	first := startKlectr(t, bin, env)
	if sio != nil {
		sio.connect("before", first.url, alice, false)
	}
	image := fixture(t, "valid/video-001.q50.420.jpeg")
	owners := map[string]string{}
	for range requests {
		ids, err := postImages(context.Background(), first.url, alice, image, perRequest)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			owners[id] = alice
		}
	}
	ai.waitCalls(t, concurrency, 60*time.Second)
	first.kill()
	if first.state.Success() {
		t.Fatalf("the killed process exited 0:\n%s", first.logs.text())
	}
	first.checkClean()
	interrupted := map[string]bool{}
	phase1 := ai.all()
	for _, c := range phase1 {
		interrupted[c.AssetID] = c.Status == 0
	}
	for id, unanswered := range interrupted {
		if !unanswered {
			delete(interrupted, id)
		}
	}
	if len(interrupted) == 0 {
		t.Fatal("no job was in the AI call at the kill")
	}

	neverStarted := total - len(interrupted)
	for _, c := range phase1 {
		if !interrupted[c.AssetID] {
			neverStarted-- // answered at the 2 s fallback before the kill
		}
	}

	close(restarted)
	restart := time.Now()
	second := startKlectr(t, bin, env)
	if sio != nil {
		// The events of the jobs run again go to this socket; the AI holds
		// its answers until it is connected, so none is sent to nobody.
		sio.connect("after", second.url, alice, true)
	}
	close(answer)
	var firstCall, firstRerun, lastRerun time.Duration
	ai.waitUntil(t, 60*time.Second, "the interrupted jobs to run again", func(calls []aiCall) bool {
		rerun := map[string]time.Duration{}
		firstCall = 0
		for _, c := range calls {
			if c.At.After(restart) && firstCall == 0 {
				firstCall = c.At.Sub(restart)
			}
			if interrupted[c.AssetID] && c.At.After(restart) {
				if _, ok := rerun[c.AssetID]; !ok {
					rerun[c.AssetID] = c.At.Sub(restart)
				}
			}
		}
		firstRerun, lastRerun = time.Duration(1<<62), 0
		for _, d := range rerun {
			firstRerun, lastRerun = min(firstRerun, d), max(lastRerun, d)
		}
		return len(rerun) == len(interrupted)
	})
	final := waitAllFinal(t, second.url, owners, 2*time.Minute)
	allFinal := time.Since(restart)
	for id, a := range final {
		calls := ai.callsOf(id)
		if a.Status != "draft" || a.Error != nil {
			t.Errorf("asset %s ended %s (%+v); the AI answered every call it finished, so want draft", id, a.Status, a.Error)
		}
		if interrupted[id] && (a.Attempts != 2 || len(calls) != 2) {
			t.Errorf("interrupted asset %s: attempts %d, %d AI calls; want 2 and 2 (the killed attempt counts)", id, a.Attempts, len(calls))
		}
		if a.Attempts > 2 || len(calls) > 2 {
			t.Errorf("asset %s: attempts %d, %d AI calls; one crash costs at most one attempt", id, a.Attempts, len(calls))
		}
		for i, c := range calls[:max(len(calls)-1, 0)] {
			if c.Status == http.StatusOK {
				t.Errorf("asset %s: AI call %d succeeded, yet it was called again", id, i+1)
			}
		}
	}
	counts := waitCounts(t, second.url, admin, time.Minute, func(c map[string]int) bool { return c["completed"] == total })
	if counts["completed"] != total || counts["dead"]+counts["pending"]+counts["active"]+counts["retrying"] != 0 {
		t.Errorf("admin counts after the restart: %v; want %d completed and nothing else", counts, total)
	}
	if sio != nil {
		sio.waitAssets(total, 30*time.Second) // before the stop closes the sockets
	}
	if code := second.stop(40 * time.Second); code != 0 {
		t.Errorf("the restarted process exited %d on SIGTERM:\n%s", code, second.logs.text())
	}
	second.checkClean()

	stored := readStoredAssets(t, dataDir)
	if len(stored) != total {
		t.Errorf("%d assets on disk, %d accepted", len(stored), total)
	}
	for id := range owners {
		if a := stored[id]; a.Status != "draft" || a.EventPending || a.EventID == "" {
			t.Errorf("asset %s on disk: %+v; want draft with its event sent", id, a)
		}
	}
	if sio != nil {
		want := map[string]wantEvent{}
		for id := range owners {
			want[id] = wantEvent{User: "alice", Status: "completed", EventID: stored[id].EventID, Sockets: []string{"before", "after"}}
		}
		checkClientEvents(t, sio, want, true)
	}
	t.Logf("kill -9 with %d of %d jobs in the AI call. From the restart: listening %v, worker started %v, first job at the AI %v, "+
		"first of the %d interrupted jobs at the AI %v, all of them %v (they queue behind the %d never started), all %d final %v",
		len(interrupted), total, second.listened.Sub(restart).Round(time.Millisecond), second.working.Sub(restart).Round(time.Millisecond),
		firstCall.Round(time.Millisecond), len(interrupted), firstRerun.Round(time.Millisecond), lastRerun.Round(time.Millisecond),
		neverStarted, total, allFinal.Round(time.Millisecond))
}

// testCrashOnLastAttempt: a job killed during its last attempt is dead at
// the restart (it is not run a third time); its asset must not stay
// processing: the reconciler fails it, and its event is sent.
func testCrashOnLastAttempt(t *testing.T, bin string) {
	const total = 2
	ai := newFakeAI(t, func(r *http.Request, _ string, _, _ int) (int, string) {
		select {
		case <-r.Context().Done():
			return 0, ""
		case <-time.After(30 * time.Second):
			return http.StatusOK, `{"label":"too late"}`
		}
	})
	dataDir := t.TempDir()
	env := baseEnv(t, ai, dataDir)
	env["JOB_MAX_RETRIES"] = "0"
	keys := auth.NewKeys([]byte(testSecret), nil)
	alice, _ := keys.Sign("alice", "", time.Hour)
	admin, _ := keys.Sign("ops", "admin", time.Hour)

	first := startKlectr(t, bin, env)
	ids, err := postImages(context.Background(), first.url, alice, fixture(t, "valid/video-001.q50.420.jpeg"), total)
	if err != nil {
		t.Fatal(err)
	}
	ai.waitCalls(t, total, 60*time.Second)
	first.kill()
	first.checkClean()

	restart := time.Now()
	second := startKlectr(t, bin, env)
	owners := map[string]string{}
	for _, id := range ids {
		owners[id] = alice
	}
	final := waitAllFinal(t, second.url, owners, time.Minute)
	failedAfter := time.Since(restart)
	for id, a := range final {
		if a.Status != "failed" || a.Error == nil || a.Error.Code != "job_dead" || a.Attempts != 1 {
			t.Errorf("asset %s after its job died on its last attempt: %s, %+v, attempts %d; want failed with job_dead after 1",
				id, a.Status, a.Error, a.Attempts)
		}
		if n := len(ai.callsOf(id)); n != 1 {
			t.Errorf("asset %s: %d AI calls; a job dead at the restart must not run again", id, n)
		}
	}
	counts := waitCounts(t, second.url, admin, time.Minute, func(c map[string]int) bool { return c["dead"] == total })
	if counts["dead"] != total || counts["completed"]+counts["pending"]+counts["active"]+counts["retrying"] != 0 {
		t.Errorf("admin counts %v; want %d dead jobs (one per failed asset) and nothing else", counts, total)
	}
	if code := second.stop(40 * time.Second); code != 0 {
		t.Errorf("exit code %d:\n%s", code, second.logs.text())
	}
	second.checkClean()
	for _, id := range ids {
		if a := readStoredAssets(t, dataDir)[id]; a.Status != "failed" || a.EventPending || a.EventID == "" {
			t.Errorf("asset %s on disk: %+v; want failed with its event sent", id, a)
		}
	}
	t.Logf("kill -9 during the last attempt of %d jobs: their assets failed (job_dead) %v after the restart", total, failedAfter.Round(time.Millisecond))
}

// wantEvent is what the asset_processed event of one asset must say.
type wantEvent struct {
	User, Status, EventID string
	Sockets               []string // the sockets of its owner: no other may receive it
}

// checkClientEvents checks that the client received an asset_processed
// event for every asset, valid against the schema, on its owner's sockets
// only, with the event id the store recorded; a repeat (same id) only if
// repeats are allowed (after a crash).
func checkClientEvents(t *testing.T, sio *sioClient, want map[string]wantEvent, repeatsAllowed bool) {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	sch, err := c.Compile("../../api/asset-processed-event.schema.json")
	if err != nil {
		t.Fatalf("compile the event schema: %v", err)
	}
	got := map[string][]string{} // assetId → eventIds received
	events := sio.events()
	for _, e := range events {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(e.Data))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(v); err != nil {
			t.Errorf("event %s does not match the schema: %v", e.Data, err)
		}
		var ev struct{ EventID, AssetID, UserID, Status string }
		json.Unmarshal(e.Data, &ev)
		w, ok := want[ev.AssetID]
		if !ok || ev.UserID != w.User || ev.Status != w.Status || !slices.Contains(w.Sockets, e.Socket) {
			t.Errorf("socket %s received %s; want only events of its own assets", e.Socket, e.Data)
		}
		got[ev.AssetID] = append(got[ev.AssetID], ev.EventID)
	}
	repeats := 0
	for id, w := range want {
		ids := got[id]
		switch {
		case len(ids) == 0:
			t.Errorf("asset %s: no asset_processed event reached the client", id)
			continue
		case len(ids) > 1 && !repeatsAllowed:
			t.Errorf("asset %s: %d events %v without a crash; want exactly one", id, len(ids), ids)
		}
		for _, e := range ids {
			if e != w.EventID {
				t.Errorf("asset %s: event ids %v, the store recorded %s", id, ids, w.EventID)
				break
			}
		}
		repeats += len(ids) - 1
	}
	t.Logf("the Socket.IO client received %d asset_processed events for %d assets (%d repeats)", len(events), len(want), repeats)
}

// testGracefulStop: SIGTERM while one job is in the AI call and an upload
// is being received. The upload gets its 202, the job finishes, the
// process exits 0, and the upload's job is done after the next start.
func testGracefulStop(t *testing.T, bin string) {
	release := make(chan struct{})
	ai := newFakeAI(t, func(r *http.Request, _ string, _, _ int) (int, string) {
		select {
		case <-release:
		case <-r.Context().Done():
			return 0, ""
		}
		return http.StatusOK, `{"label":"card"}`
	})
	dataDir := t.TempDir()
	env := baseEnv(t, ai, dataDir)
	keys := auth.NewKeys([]byte(testSecret), nil)
	alice, _ := keys.Sign("alice", "", time.Hour)
	image := fixture(t, "valid/video-001.q50.420.jpeg")

	p := startKlectr(t, bin, env)
	ids, err := postImages(context.Background(), p.url, alice, image, 1)
	if err != nil {
		t.Fatal(err)
	}
	running := ids[0]
	ai.waitCalls(t, 1, 60*time.Second)

	// An upload whose body is still arriving at SIGTERM.
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	req, _ := http.NewRequest(http.MethodPost, p.url+"/api/assets/analyze-queue", pr)
	req.Header.Set("Authorization", "Bearer "+alice)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	type reply struct {
		ids []string
		err error
	}
	replied := make(chan reply, 1)
	go func() {
		ids, err := acceptedIDs(http.DefaultClient.Do(req))
		replied <- reply{ids, err}
	}()
	part, err := mw.CreateFormFile("images", "in-flight.jpg")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := part.Write(image[:len(image)/2]); err != nil {
		t.Fatal(err)
	}
	// The server is receiving it once it has begun writing the blob.
	waitFor(t, 30*time.Second, "the upload to reach the blob store", func() bool {
		tmp, _ := os.ReadDir(filepath.Join(dataDir, "blobs", "tmp"))
		return len(tmp) > 0
	})

	sigterm := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Shutdown has begun once the listener is closed.
	waitFor(t, 30*time.Second, "the listener to close", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(p.url, "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if p.exited() {
		t.Fatalf("klectr exited while an upload was being received:\n%s", p.logs.text())
	}
	if _, err := part.Write(image[len(image)/2:]); err != nil {
		t.Fatal(err)
	}
	mw.Close()
	pw.Close()
	r := <-replied
	if r.err != nil || len(r.ids) != 1 {
		t.Fatalf("the upload in flight at SIGTERM: %v %v; want its 202", r.ids, r.err)
	}
	inFlight := r.ids[0]
	if p.exited() {
		t.Fatalf("klectr exited while a job was in the AI call:\n%s", p.logs.text())
	}
	close(release)
	if code := p.wait(40 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, p.logs.text())
	}
	stopped := time.Since(sigterm)
	p.checkClean()
	logs := p.logs.text()
	last := -1
	for _, m := range []string{`"msg":"stopping"`, `"msg":"HTTP server stopped"`, `"msg":"worker stopped"`, `"msg":"stopped"`} {
		i := strings.Index(logs, m)
		if i < last {
			t.Fatalf("shutdown order: %s is missing or out of order:\n%s", m, logs)
		}
		last = i
	}

	stored := readStoredAssets(t, dataDir)
	if a := stored[running]; a.Status != "draft" || a.Attempts != 1 || a.EventPending {
		t.Errorf("the job running at SIGTERM left its asset %+v; want draft after 1 attempt, event sent", a)
	}
	if calls := ai.callsOf(running); len(calls) != 1 || calls[0].Status != http.StatusOK {
		t.Errorf("AI calls for the running job: %+v", calls)
	}
	a, ok := stored[inFlight]
	if !ok || (a.Status != "processing" && a.Status != "draft") {
		t.Fatalf("the upload accepted during the stop left %+v (stored %v)", a, ok)
	}

	// Its job is durable: the next start works it.
	env["ADDR"] = freeAddr(t)
	again := startKlectr(t, bin, env)
	final := waitAllFinal(t, again.url, map[string]string{running: alice, inFlight: alice}, 60*time.Second)
	if final[inFlight].Status != "draft" || final[running].Status != "draft" {
		t.Errorf("after the restart: %+v", final)
	}
	if code := again.stop(40 * time.Second); code != 0 {
		t.Errorf("exit code %d:\n%s", code, again.logs.text())
	}
	again.checkClean()
	t.Logf("SIGTERM → exit 0 in %v (the AI held the running job until the in-flight upload had its 202); in-flight asset was %s at exit",
		stopped.Round(time.Millisecond), a.Status)
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
