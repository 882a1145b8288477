package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/app"
	"github.com/klectr/klectr/internal/bench"
)

// TestBenchAgainstServe runs `klectr bench` against a real `klectr serve`
// (in process, built-in analyzer, the secret it generates in its data
// directory): every upload is acknowledged and every event reaches its
// owner, once.
func TestBenchAgainstServe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := map[string]string{"ADDR": "127.0.0.1:0", "DATA_DIR": dir, "UPLOAD_RATE": "0", "WORKER_CONCURRENCY": "4"}
	ctx, stop := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"serve"}, func(k string) string { return env[k] }, io.Discard, pw)
		pw.Close()
	}()
	addr := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct{ Msg, Addr, Level string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "listening" {
				addr <- rec.Addr
			}
			if rec.Level == "ERROR" || rec.Level == "WARN" {
				t.Log("serve:", sc.Text())
			}
		}
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-done:
			<-scanned // Run has returned and closed the pipe
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30s")
		}
	})
	var url string
	select {
	case a := <-addr:
		url = "http://" + a
	case code := <-done:
		t.Fatalf("serve exited with %d before listening", code)
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not listen within 30s")
	}

	bctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errs bytes.Buffer
	args := []string{"-url", url, "-data-dir", dir, "-users", "8", "-c", "4", "-n", "24", "-image-bytes", "20000", "-wait", "20s", "-baseline"}
	code := bench.Main(bctx, args, func(string) string { return "" }, &out, &errs)
	t.Logf("klectr bench → %d\n%s%s", code, out.String(), errs.String())
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"202: 24, assets 24", "events 24: missing 0  duplicate 0 (repeats 0)  cross-user 0", "baseline: sink "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
