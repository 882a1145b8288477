package app

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"testing"
	"time"
)

// failSchedule decides, per asset, which of its calls the fake AI fails:
// call i of the asset first seen as seq fails iff the i-th draw of a PCG
// seeded with (seed, seq) is below rate. The schedule depends only on seq,
// so the number of assets that fail all their attempts is known in advance.
type failSchedule struct {
	seed uint64
	rate float64
}

func (s failSchedule) fails(seq, call int) bool {
	r := rand.New(rand.NewPCG(s.seed, uint64(seq)))
	var f float64
	for range call {
		f = r.Float64()
	}
	return f < s.rate
}

// want returns the attempts an asset of rank seq takes and whether it ends
// failed, given maxAttempts.
func (s failSchedule) want(seq, maxAttempts int) (attempts int, failed bool) {
	for call := 1; call <= maxAttempts; call++ {
		if !s.fails(seq, call) {
			return call, false
		}
	}
	return maxAttempts, true
}

// TestServe100JobsWith30PercentAIFailures runs 100 uploads through klectr
// serve against an AI service that fails about 30 % of calls with a 500:
// every asset ends draft or failed (failed only after 4 failed attempts),
// with exactly one final state (no call after it, no attempt beyond the
// 4th; a failure the AI breaker takes as an outage's costs no attempt), and
// the admin API's counts agree.
func TestServe100JobsWith30PercentAIFailures(t *testing.T) {
	t.Parallel()
	const (
		requests    = 10
		perRequest  = 10
		total       = requests * perRequest
		maxAttempts = 4 // JOB_MAX_RETRIES=3
	)
	sched := failSchedule{seed: 7, rate: 0.3}
	wantDead := 0
	for seq := range total {
		if _, failed := sched.want(seq, maxAttempts); failed {
			wantDead++
		}
	}
	if wantDead == 0 {
		t.Fatal("the schedule kills no asset; pick a seed that exercises dead jobs")
	}

	ai := newFakeAI(t, func(_ *http.Request, _ string, seq, call int) (int, string) {
		if call <= maxAttempts && sched.fails(seq, call) {
			return http.StatusInternalServerError, `{"error":"injected fault"}`
		}
		return http.StatusOK, fmt.Sprintf(`{"label":"card","seq":%d,"call":%d}`, seq, call)
	})
	s := startServer(t, map[string]string{
		"AI_SERVICE_URL":  ai.url(),
		"JOB_BACKOFF":     "10ms",
		"JOB_MAX_RETRIES": "3",
		"LOG_LEVEL":       "info",
	})
	admin, _ := s.keys.Sign("ops", "admin", time.Hour)
	const users = 4
	tokens := make([]string, users)
	sio := startSIO(t)
	for u := range users {
		tokens[u], _ = s.keys.Sign(fmt.Sprintf("user%d", u), "", time.Hour)
		if sio != nil {
			sio.connect(fmt.Sprintf("user%d", u), s.url, tokens[u], true)
		}
	}

	// Ten requests of ten images at once, from four users.
	image := fixture(t, "valid/video-001.q50.420.jpeg")
	type result struct {
		user int
		ids  []string
		err  error
	}
	results := make(chan result, requests)
	start := time.Now()
	for i := range requests {
		go func() {
			ids, err := postImages(context.Background(), s.url, tokens[i%users], image, perRequest)
			results <- result{i % users, ids, err}
		}()
	}
	owners := map[string]string{} // asset id → its owner's token
	userOf := map[string]int{}
	for range requests {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		for _, id := range r.ids {
			owners[id], userOf[id] = tokens[r.user], r.user
		}
	}
	if len(owners) != total {
		t.Fatalf("%d distinct assets accepted, want %d", len(owners), total)
	}
	accepted := time.Since(start)

	final := waitAllFinal(t, s.url, owners, 3*time.Minute) // generous: -race on a busy machine is slow
	elapsed := time.Since(start)
	callsAtFinal := len(ai.all())

	var drafts, failed []string
	absorbed := 0
	for id, a := range final {
		calls := ai.callsOf(id)
		if len(calls) == 0 {
			t.Errorf("asset %s is %s without any AI call", id, a.Status)
			continue
		}
		seq := mustSeq(t, ai, id)
		_, wantFailed := sched.want(seq, maxAttempts)
		statuses := make([]int, len(calls))
		fails := 0
		for i, c := range calls {
			statuses[i] = c.Status
			if c.Status != 200 {
				fails++
			}
		}
		// The AI breaker takes a failure that is part of a run of outage
		// failures (five in a row, across jobs) as the outage's, not the
		// job's: such a call costs no attempt. Every other call does.
		if a.Attempts > len(calls) || len(calls)-a.Attempts > fails {
			t.Errorf("asset %s: %d attempts for AI answers %v; want one per call, less only failures the breaker took", id, a.Attempts, statuses)
		}
		absorbed += len(calls) - a.Attempts
		switch a.Status {
		case "draft":
			drafts = append(drafts, id)
			if statuses[len(statuses)-1] != 200 || a.AIMetadata["seq"] != float64(seq) {
				t.Errorf("draft asset %s (seq %d): attempts %d, AI answers %v, metadata %v; want attempts ending in the one success",
					id, seq, a.Attempts, statuses, a.AIMetadata)
			}
		case "failed":
			failed = append(failed, id)
			if !wantFailed || a.Attempts != maxAttempts || slices.Contains(statuses, 200) ||
				a.Error == nil || a.Error.Code != "ai_unavailable" {
				t.Errorf("failed asset %s (seq %d): attempts %d, AI answers %v, error %+v; want failed only after %d failed attempts",
					id, seq, a.Attempts, statuses, a.Error, maxAttempts)
			}
		default:
			t.Errorf("asset %s ended %q", id, a.Status)
		}
		if a.Attempts > maxAttempts {
			t.Errorf("asset %s: %d attempts, more than %d", id, a.Attempts, maxAttempts)
		}
		if i := slices.Index(statuses, 200); i >= 0 && i != len(statuses)-1 {
			t.Errorf("asset %s: AI called again after it had succeeded: %v", id, statuses)
		}
	}
	// An asset fails only when its first four calls fail (the schedule
	// kills it); one the breaker spared an attempt may still succeed.
	if len(failed) > wantDead || (absorbed == 0 && len(failed) != wantDead) {
		t.Errorf("%d assets failed, the schedule kills %d (%d failures taken by the breaker)", len(failed), wantDead, absorbed)
	}

	counts := waitCounts(t, s.url, admin, time.Minute, func(c map[string]int) bool {
		return c["completed"] == len(drafts) && c["dead"] == len(failed)
	})
	if counts["completed"] != len(drafts) || counts["dead"] != len(failed) ||
		counts["pending"]+counts["active"]+counts["retrying"] != 0 {
		t.Errorf("admin counts %v; want completed %d, dead %d and nothing else", counts, len(drafts), len(failed))
	}
	var dead []struct{ ID string }
	if status, err := getJSON(s.url, "/api/admin/jobs?state=dead&limit=1000", admin, &struct{ Jobs *[]struct{ ID string } }{&dead}); err != nil || status != 200 {
		t.Fatalf("list dead jobs: %d %v", status, err)
	}
	var deadIDs, failedJobs []string
	for _, j := range dead {
		deadIDs = append(deadIDs, j.ID)
	}
	for _, id := range failed {
		failedJobs = append(failedJobs, final[id].ProcessingJobID)
	}
	sort.Strings(deadIDs)
	sort.Strings(failedJobs)
	if !slices.Equal(deadIDs, failedJobs) {
		t.Errorf("dead jobs %v\nare not the jobs of the failed assets %v", deadIDs, failedJobs)
	}

	if sio != nil {
		sio.waitAssets(total, 30*time.Second) // before the stop closes the sockets
	}
	if code := s.shutdown(); code != 0 {
		t.Fatalf("serve exited with %d", code)
	}
	if n := len(ai.all()); n != callsAtFinal {
		t.Errorf("the AI got %d calls after every asset was final", n-callsAtFinal)
	}
	stored := readStoredAssets(t, s.dir)
	for id := range owners {
		if a, ok := stored[id]; !ok || a.EventPending || a.EventID == "" {
			t.Errorf("asset %s on disk: %+v; want its event sent", id, a)
		}
	}
	if sio != nil {
		want := map[string]wantEvent{}
		for id, a := range final {
			status := map[string]string{"draft": "completed", "failed": "failed"}[a.Status]
			user := fmt.Sprintf("user%d", userOf[id])
			want[id] = wantEvent{User: user, Status: status, EventID: stored[id].EventID, Sockets: []string{user}}
		}
		checkClientEvents(t, sio, want, false)
	}

	fails := 0
	for _, c := range ai.all() {
		if c.Status != 200 {
			fails++
		}
	}
	t.Logf("%d assets: %d draft, %d failed; %d AI calls, %d failed (%.0f %%), %d of them taken by the breaker; accepted in %v, all final in %v (%.0f assets/s)",
		total, len(drafts), len(failed), callsAtFinal, fails, 100*float64(fails)/float64(callsAtFinal), absorbed,
		accepted.Round(time.Millisecond), elapsed.Round(time.Millisecond), total/elapsed.Seconds())
}

func mustSeq(t *testing.T, ai *fakeAI, assetID string) int {
	t.Helper()
	ai.mu.Lock()
	defer ai.mu.Unlock()
	s, ok := ai.seq[assetID]
	if !ok {
		t.Fatalf("asset %s never reached the AI", assetID)
	}
	return s
}
