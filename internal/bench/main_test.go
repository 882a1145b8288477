package bench

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// runMain runs `klectr bench` with args against f and returns its exit code
// and output.
func runMain(t *testing.T, f *fakeKlectr, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errs bytes.Buffer
	args = append([]string{"-url", f.srv.URL, "-jwt-secret", fakeSecret, "-image-bytes", "1000", "-timeout", "5s"}, args...)
	code := Main(ctx, args, func(string) string { return "" }, &out, &errs)
	t.Logf("klectr bench %s → %d\n%s%s", strings.Join(args, " "), code, out.String(), errs.String())
	return code, out.String() + errs.String()
}

func TestMainCleanRun(t *testing.T) {
	t.Parallel()
	f := newFake(t, nil)
	code, out := runMain(t, f, "-users", "5", "-c", "4", "-n", "40")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"202: 40, assets 40", "events 40: missing 0  duplicate 0 (repeats 0)  cross-user 0", "jobs/s "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if f.uploads.Load() != 40 {
		t.Errorf("the server saw %d uploads, want 40", f.uploads.Load())
	}
}

func TestMainMissingEventFails(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(f *fakeKlectr) { f.drop = 7 })
	code, out := runMain(t, f, "-users", "3", "-c", "2", "-n", "20", "-wait", "300ms")
	if code != 1 || !strings.Contains(out, "missing 1 ") || !strings.Contains(out, "FAIL: klectr: 1 events missing") {
		t.Fatalf("exit %d with an event dropped; want 1 and missing 1", code)
	}
}

func TestMainCrossUserEventFails(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(f *fakeKlectr) { f.leak = 5 })
	code, out := runMain(t, f, "-users", "3", "-c", "2", "-n", "20", "-wait", "300ms")
	if code != 1 || !strings.Contains(out, "cross-user 1") || !strings.Contains(out, "reached another user's socket") {
		t.Fatalf("exit %d with an event leaked; want 1 and cross-user 1", code)
	}
}

func TestMainDisconnectedSocketFails(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(f *fakeKlectr) { f.kick = 4 })
	code, out := runMain(t, f, "-users", "3", "-c", "1", "-n", "12", "-wait", "300ms")
	if code != 1 || !strings.Contains(out, "sockets dropped 1") || !strings.Contains(out, "the server disconnected the socket") {
		t.Fatalf("exit %d with a socket disconnected; want 1 and sockets dropped 1", code)
	}
}

func TestMainBaseline(t *testing.T) {
	t.Parallel()
	f := newFake(t, nil)
	code, out := runMain(t, f, "-users", "2", "-c", "2", "-n", "10", "-baseline")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"sink: 10 requests", "klectr: 10 requests", "baseline: sink "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if f.uploads.Load() != 10 {
		t.Errorf("klectr saw %d uploads, want 10 (the sink takes the others)", f.uploads.Load())
	}
}

// -baseline-dir adds the durable sink, which keeps every file until its
// 202 and leaves nothing in the directory after the run.
func TestMainDurableBaseline(t *testing.T) {
	t.Parallel()
	f := newFake(t, nil)
	dir := t.TempDir()
	code, out := runMain(t, f, "-users", "2", "-c", "2", "-n", "10", "-baseline", "-baseline-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"sink: 10 requests", "durable sink: 10 requests", "klectr: 10 requests",
		"baseline: sink ", "baseline: durable sink "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if f.uploads.Load() != 10 {
		t.Errorf("klectr saw %d uploads, want 10 (the sinks take the others)", f.uploads.Load())
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the durable sink left %d entries in -baseline-dir", len(left))
	}
}

func TestMainCommandLine(t *testing.T) {
	t.Parallel()
	f := newFake(t, nil)
	for _, args := range [][]string{
		{"-users", "0"},
		{"-c", "0"},
		{"-n", "0"},
		{"-duration", "2h"},
		{"-url", "http://192.0.2.1:8080"},
		{"-url", "ftp://127.0.0.1"},
		{"-jwt-secret", "short"},
		{"-baseline-dir", "/tmp"},
		{"-bogus"},
		{"extra"},
	} {
		if code, _ := runMain(t, f, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	var out, errs bytes.Buffer
	if code := Main(context.Background(), []string{"-url", f.srv.URL}, func(string) string { return "" }, &out, &errs); code != 2 {
		t.Errorf("no secret: exit %d, want 2", code)
	}
	if f.uploads.Load() != 0 {
		t.Errorf("a wrong command line sent %d uploads", f.uploads.Load())
	}
	if code, _ := runMain(t, f, "-h"); code != 0 {
		t.Errorf("-h: exit %d", code)
	}
}

// Sockets the server refuses stop the run before any upload.
func TestMainServerRefusesSockets(t *testing.T) {
	t.Parallel()
	f := newFake(t, nil)
	var out, errs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := Main(ctx, []string{"-url", f.srv.URL, "-jwt-secret", strings.Repeat("x", 32), "-n", "1"},
		func(string) string { return "" }, &out, &errs)
	if code != 1 || !strings.Contains(errs.String(), "unauthorized") {
		t.Fatalf("wrong secret: exit %d\n%s%s", code, out.String(), errs.String())
	}
}
