package bench

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{1: 1, 50: 50, 90: 90, 99: 99, 99.5: 100, 100: 100} {
		if got := percentile(d, q); got != want*time.Millisecond {
			t.Errorf("p%v of 1..100 ms = %v, want %v ms", q, got, want)
		}
	}
	three := []time.Duration{1, 2, 3}
	for q, want := range map[float64]time.Duration{1: 1, 33: 1, 34: 2, 50: 2, 67: 3, 100: 3} {
		if got := percentile(three, q); got != want {
			t.Errorf("p%v of [1 2 3] = %v, want %v", q, got, want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func ev(id, asset, user string, processedMs int) Event {
	return Event{EventID: id, AssetID: asset, UserID: user, Status: "completed",
		ProcessedAt: at(processedMs).Format("2006-01-02T15:04:05.000Z07:00")}
}

func TestAnalyze(t *testing.T) {
	t.Parallel()
	users := []string{"u0", "u1"}
	ups := []upload{
		{user: 0, start: at(0), end: at(100), status: 202, assetIDs: []string{"a"}},
		{user: 1, start: at(10), end: at(120), status: 202, assetIDs: []string{"b"}},
		{user: 0, start: at(20), end: at(150), status: 202, assetIDs: []string{"c"}},
		{user: 1, start: at(30), end: at(200), status: 202, assetIDs: []string{"d"}},
		{user: 0, start: at(40), end: at(60), status: 429, body: `{"error":{"code":"rate_limited"}}`},
		{user: 1, start: at(50), end: at(70), status: 429, body: "second"},
		{user: 0, start: at(60), end: at(1060), err: "timeout"},
	}
	recs := []receipt{
		{socket: 0, ev: ev("e-a", "a", "u0", 140), at: at(150)}, // before c's 202 ended: during the uploads
		{socket: 0, ev: ev("e-a", "a", "u0", 140), at: at(300)}, // duplicate of e-a
		{socket: 0, ev: ev("e-a", "a", "u0", 140), at: at(310)}, // and a second repeat
		{socket: 1, ev: ev("e-b", "b", "u1", 400), at: at(410)},
		{socket: 1, ev: ev("e-c", "c", "u1", 420), at: at(430)}, // u0's asset, labelled u1: cross-user
		{socket: 1, ev: ev("e-x", "a", "u0", 420), at: at(430)}, // u0's event at u1's socket: cross-user
		{socket: 1, ev: ev("e-z", "z", "u1", 500), at: at(505)}, // an asset this run did not upload
	}
	r := analyze("klectr", users, ups, recs, true)
	check := func(name string, got, want int) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	check("Requests", r.Requests, 7)
	check("Accepted", r.Accepted, 4)
	check("Assets", r.Assets, 4)
	check("ByStatus[429]", r.ByStatus[http.StatusTooManyRequests], 2)
	check("Transport[timeout]", r.Transport["timeout"], 1)
	check("Failed", r.Failed(), 3)
	check("Delivered", r.Delivered, 2) // a and b
	check("During", r.During, 2)       // a and b, both before the timed-out request ended the phase
	check("Missing", r.Missing, 2)     // c and d
	check("Duplicates", r.Duplicates, 1)
	check("Repeats", r.Repeats, 2)
	check("CrossUser", r.CrossUser, 2)
	check("Unknown", r.Unknown, 1)
	check("Received", r.Received, 5)
	if r.FirstBody[429] != `{"error":{"code":"rate_limited"}}` {
		t.Errorf("first 429 body = %q", r.FirstBody[429])
	}
	if !r.Start.Equal(at(0)) || !r.End.Equal(at(1060)) {
		t.Errorf("phase %v..%v", r.Start, r.End)
	}
	// Submit latencies of the six replies; the timeout has none.
	if len(r.Submit) != 6 || r.Submit[0] != 20*time.Millisecond || r.Submit[5] != 170*time.Millisecond {
		t.Errorf("Submit = %v", r.Submit)
	}
	// End to end: a 0→150, b 10→410.
	if len(r.E2E) != 2 || r.E2E[0] != 150*time.Millisecond || r.E2E[1] != 400*time.Millisecond {
		t.Errorf("E2E = %v", r.E2E)
	}
	// Lag of each eventId's first receipt that is not cross-user: e-a, e-b, e-z.
	if len(r.Lag) != 3 || r.Lag[0] != 5*time.Millisecond || r.Lag[2] != 10*time.Millisecond {
		t.Errorf("Lag = %v", r.Lag)
	}
	if p := r.Problems(); len(p) != 3 {
		t.Errorf("Problems = %q, want the failed requests, the missing and the cross-user events", p)
	}
	if got := r.UploadRate(); got < 3.7735 || got > 3.7736 {
		t.Errorf("UploadRate = %v", r.UploadRate())
	}

	var out bytes.Buffer
	r.Print(&out)
	for _, want := range []string{
		"klectr: 7 requests in 1.06s: 3.8 uploads/s acknowledged (202: 4, assets 4)",
		`status 429: 2  first body: {"error":{"code":"rate_limited"}}`,
		"no reply (timeout): 1",
		"submit latency  p50 100.0ms  p90 170.0ms  p99 170.0ms  max 170.0ms",
		"end-to-end      p50 150.0ms  p90 400.0ms",
		"events 5: missing 2  duplicate 1 (repeats 2)  cross-user 2  unknown assets 1",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestAnalyzeCleanRun(t *testing.T) {
	t.Parallel()
	ups := []upload{{user: 0, start: at(0), end: at(50), status: 202, assetIDs: []string{"a"}}}
	recs := []receipt{{socket: 0, ev: ev("e", "a", "u0", 60), at: at(61)}}
	r := analyze("klectr", []string{"u0"}, ups, recs, true)
	if p := r.Problems(); len(p) != 0 || r.Delivered != 1 || r.During != 0 {
		t.Fatalf("clean run: problems %q, delivered %d, during %d", p, r.Delivered, r.During)
	}
	// The sink's report has no events to miss.
	s := analyze("sink", []string{"u0"}, []upload{{user: 0, start: at(0), end: at(1), status: 202}}, nil, false)
	if p := s.Problems(); len(p) != 0 || s.Missing != 0 {
		t.Fatalf("sink: problems %q", p)
	}
}

// An event can arrive before its upload's 202 has been read; the tracker
// matches it either way, and only at its owner's socket.
func TestTrackerMatchesInEitherOrder(t *testing.T) {
	t.Parallel()
	tr := newTracker()
	tr.addReceipt(receipt{socket: 0, ev: Event{AssetID: "early"}})
	tr.addReceipt(receipt{socket: 1, ev: Event{AssetID: "wrong"}})
	tr.addUpload(upload{user: 0, status: 202, assetIDs: []string{"early", "wrong", "late"}})
	if n := tr.pending(); n != 2 {
		t.Fatalf("pending = %d, want 2 (wrong, late)", n)
	}
	if tr.waitAll(10*time.Millisecond, nil) {
		t.Fatal("waitAll reported done with events pending")
	}
	tr.addReceipt(receipt{socket: 0, ev: Event{AssetID: "late"}})
	tr.addReceipt(receipt{socket: 0, ev: Event{AssetID: "wrong"}})
	if !tr.waitAll(time.Second, nil) {
		t.Fatalf("waitAll: %d pending", tr.pending())
	}
}
