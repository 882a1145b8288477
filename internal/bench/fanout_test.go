package bench_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/bench"
)

// TestFanout runs `klectr bench -fanout` small: every published event
// reaches its user's socket once, the run passes, and the report has the
// figures test/load/README.md quotes.
func TestFanout(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := bench.Main(ctx, []string{"-fanout", "-users", "20", "-rate", "400", "-duration", "500ms", "-publishers", "8", "-wait", "20s"},
		func(string) string { return "" }, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errOut)
	}
	for _, want := range []string{
		"200 events scheduled, 200 published",
		"event lag ",
		"events 200: missing 0  duplicate 0 (repeats 0)  cross-user 0  sockets dropped 0",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, &out)
		}
	}
}

// -fanout runs its own server: the flags of a run against one are refused.
func TestFanoutRefusesServerFlags(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	code := bench.Main(context.Background(), []string{"-fanout", "-url", "http://127.0.0.1:1"},
		func(string) string { return "" }, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "-fanout measures the realtime path") {
		t.Fatalf("exit %d, stderr %q; want 2 and the reason", code, &errOut)
	}
}
