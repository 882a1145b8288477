package console_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// BrowserDirEnv names the test/browser directory in which `npm ci` has
// installed playwright-core; scripts/test sets it after installing Debian's
// chromium.
const BrowserDirEnv = "KLECTR_BROWSER_DIR"

// browserDir returns test/browser from KLECTR_BROWSER_DIR, or skips t when
// the variable is unset. A set variable whose directory, node or chromium is
// missing fails t: the run asked for these tests.
func browserDir(t *testing.T) (dir, node, chromium string) {
	t.Helper()
	dir = os.Getenv(BrowserDirEnv)
	if dir == "" {
		t.Skipf("set %s=<repo>/test/browser (after `npm ci --prefix test/browser` and `apt-get install chromium`) to run the console in a real browser", BrowserDirEnv)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json")); err != nil {
		t.Fatalf("%s=%q has no node_modules/playwright-core; run `npm ci --prefix test/browser`: %v", BrowserDirEnv, dir, err)
	}
	if node, err = exec.LookPath("node"); err != nil {
		t.Fatalf("%s is set but node is not on PATH: %v", BrowserDirEnv, err)
	}
	chromium = os.Getenv("KLECTR_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s is set but there is no chromium at %s (apt-get install chromium, or set KLECTR_CHROMIUM): %v", BrowserDirEnv, chromium, err)
	}
	return dir, node, chromium
}

// TestConsoleInChromium runs test/browser/console.mjs against a real
// `klectr serve` whose AI service refuses the first two images (400: their
// jobs die at once) and analyses every later one: a developer uploads a photo
// and sees it reach draft live; an operator replays one dead job and sees the
// counts change, then deletes the other; a user token cannot open the
// operator views, and the API refuses it.
func TestConsoleInChromium(t *testing.T) {
	dir, node, chromium := browserDir(t)
	bin := buildKlectr(t)

	var refuse atomic.Bool
	refuse.Store(true)
	ai := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, io.LimitReader(r.Body, 32<<20))
		w.Header().Set("Content-Type", "application/json")
		if refuse.Load() {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"unsupported image"}`)
			return
		}
		io.WriteString(w, `{"category":"trading card","title":"Test card","confidence":0.93}`)
	}))
	t.Cleanup(ai.Close)

	env := []string{
		"ADDR=" + freeAddr(t),
		"DATA_DIR=" + t.TempDir(),
		"JWT_SECRET=console-browser-test-secret-0123456789abcdef",
		"AI_SERVICE_URL=" + ai.URL,
		"LOG_FORMAT=json",
	}
	base := serve(t, bin, env)
	user := token(t, bin, env, "alice")
	admin := token(t, bin, env, "-role", "admin", "ops")

	// Two dead jobs, of another user, for the operator to replay and delete.
	bob := token(t, bin, env, "bob")
	upload(t, base, bob, "../../testdata/images/valid/basn3p08.png")
	upload(t, base, bob, "../../testdata/images/valid/basn0g01.png")
	waitFor(t, 30*time.Second, "two dead jobs", func() bool { return deadJobs(t, base, admin) == 2 })
	refuse.Store(false)

	shots := os.Getenv("KLECTR_SCREENSHOTS")
	if shots == "" {
		shots = filepath.Join(dir, "screenshots")
	}
	fixture, err := filepath.Abs("../../testdata/images/valid/go-turns-two-280x360.jpeg")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "console.mjs"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"KLECTR_URL="+base, "USER_TOKEN="+user, "ADMIN_TOKEN="+admin,
		"FIXTURE="+fixture, "SCREENSHOTS="+shots, "CHROMIUM="+chromium)
	out, err := cmd.CombinedOutput()
	t.Logf("console.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("console.mjs: %v", err)
	}
	t.Logf("screenshots in %s", shots)
}

func buildKlectr(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "klectr")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/klectr")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/klectr: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serve starts `klectr serve` and returns its base URL once its worker runs.
func serve(t *testing.T, bin string, env []string) string {
	t.Helper()
	cmd := exec.Command(bin, "serve")
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reads after start-up; drop the line
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	var url string
	deadline := time.After(60 * time.Second)
	for working := false; url == "" || !working; {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("klectr serve exited during start-up")
			}
			var rec struct{ Msg, Addr string }
			json.Unmarshal([]byte(line), &rec)
			switch rec.Msg {
			case "listening":
				url = "http://" + rec.Addr
			case "worker started":
				working = true
			}
		case <-deadline:
			t.Fatal("klectr serve did not start within 60s")
		}
	}
	return url
}

func token(t *testing.T, bin string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"token"}, args...)...)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("klectr token %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

func upload(t *testing.T, base, tok, path string) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	part, err := mw.CreateFormFile("images", filepath.Base(path))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	part.Write(f)
	mw.Close()
	req, _ := http.NewRequest("POST", base+"/api/assets/analyze-queue", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		t.Fatalf("upload: %s %s", res.Status, b)
	}
}

func deadJobs(t *testing.T, base, admin string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/api/admin/jobs?state=dead", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var v struct{ Jobs []json.RawMessage }
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&v); err != nil {
		t.Fatalf("GET /api/admin/jobs: %s: %v", res.Status, err)
	}
	return len(v.Jobs)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(timeout); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no %s within %v", what, timeout)
		}
	}
}
