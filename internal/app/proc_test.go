package app

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/testenv"
)

// buildKlectr builds ./cmd/klectr into a temporary directory of t, with the
// race detector when this test binary has it.
func buildKlectr(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the process tests build ./cmd/klectr and need the go command: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "klectr")
	args := []string{"build", "-o", bin}
	if raceBuild {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool, append(args, "./cmd/klectr")...)
	cmd.Dir = filepath.Join("..", "..")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("built %s (race %v) in %v", bin, raceBuild, time.Since(start).Round(time.Millisecond))
	return bin
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// lineLog collects the lines a child process prints, decoding the JSON ones,
// and lets a test wait for a line.
type lineLog struct {
	mu      sync.Mutex
	raw     []string
	recs    []map[string]any // nil for a line that is not a JSON object
	changed chan struct{}
	closed  bool
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) add(line string) {
	var rec map[string]any
	if json.Unmarshal([]byte(line), &rec) != nil {
		rec = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.raw = append(l.raw, line)
	l.recs = append(l.recs, rec)
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *lineLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
}

// read scans r line by line until EOF.
func (l *lineLog) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		l.add(sc.Text())
	}
	l.close()
}

func (l *lineLog) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.raw, "\n")
}

// records returns the JSON lines for which pred holds.
func (l *lineLog) records(pred func(map[string]any) bool) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, r := range l.recs {
		if r != nil && pred(r) {
			out = append(out, r)
		}
	}
	return out
}

var errLogClosed = errors.New("the process closed its output")

// wait returns the first JSON line for which pred
// holds, waiting up to timeout for it.
func (l *lineLog) wait(timeout time.Duration, pred func(map[string]any) bool) (map[string]any, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		for _, r := range l.recs {
			if r != nil && pred(r) {
				l.mu.Unlock()
				return r, nil
			}
		}
		changed, closed := l.changed, l.closed
		l.mu.Unlock()
		if closed {
			return nil, errLogClosed
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("no such line within %v", timeout)
		}
	}
}

func hasMsg(msg string) func(map[string]any) bool {
	return func(r map[string]any) bool { return r["msg"] == msg }
}

// proc is a klectr process started by a test.
type proc struct {
	t        *testing.T
	cmd      *exec.Cmd
	logs     *lineLog
	done     chan struct{} // closed once the process has exited
	state    *os.ProcessState
	url      string
	started  time.Time // just before exec
	listened time.Time // the time of its "listening" line
	working  time.Time // the time of its "worker started" line
}

// startKlectr runs `klectr serve` with exactly env (plus GORACE) and waits
// until it listens and its worker has started.
func startKlectr(t *testing.T, bin string, env map[string]string) *proc {
	t.Helper()
	cmd := exec.Command(bin, "serve")
	cmd.Env = []string{"GORACE=halt_on_error=0", "LOG_FORMAT=json"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, logs: newLineLog(), done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.logs.read(stderr)
		cmd.Wait() // after the pipe is drained, as os/exec requires
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(p.kill)
	rec, err := p.logs.wait(60*time.Second, hasMsg("listening"))
	if err != nil {
		p.kill()
		t.Fatalf("klectr serve did not listen: %v\n%s", err, p.logs.text())
	}
	p.listened = logTime(t, rec)
	p.url = "http://" + rec["addr"].(string)
	if rec, err = p.logs.wait(60*time.Second, hasMsg("worker started")); err != nil {
		p.kill()
		t.Fatalf("klectr serve did not start its worker: %v\n%s", err, p.logs.text())
	}
	p.working = logTime(t, rec)
	return p
}

// logTime is the time of a JSON log line.
func logTime(t *testing.T, rec map[string]any) time.Time {
	t.Helper()
	s, _ := rec["time"].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line without a time: %v", rec)
	}
	return at
}

// kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and returns the exit code, failing t if the process
// does not exit within timeout.
func (p *proc) stop(timeout time.Duration) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		p.t.Fatal(err)
	}
	return p.wait(timeout)
}

func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.state.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("klectr did not exit within %v:\n%s", timeout, p.logs.text())
		return -1
	}
}

// checkClean fails t if the process's output has a race report or a panic.
func (p *proc) checkClean() {
	p.t.Helper()
	out := p.logs.text()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(out, bad) {
			p.t.Errorf("klectr printed %q:\n%s", bad, out)
			return
		}
	}
}

// sioClient drives official socket.io-client sockets through
// test/e2e/harness.mjs (see that file for its line protocol).
type sioClient struct {
	t     *testing.T
	in    io.WriteCloser
	lines *lineLog
	done  chan struct{}
}

// startSIO starts the harness when KLECTR_E2E_DIR is set, and returns nil
// when it is not: the tests that use it then check through the data only.
func startSIO(t *testing.T) *sioClient {
	t.Helper()
	if os.Getenv(testenv.E2EDirEnv) == "" {
		t.Logf("%s is unset: events are checked through the store's outbox only", testenv.E2EDirEnv)
		return nil
	}
	dir := testenv.SocketIOClientDir(t)
	cmd := exec.Command(testenv.Node(t), "harness.mjs")
	cmd.Dir = dir
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &sioClient{t: t, in: in, lines: newLineLog(), done: make(chan struct{})}
	go func() {
		c.lines.read(out)
		cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.in.Close()
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-c.done
		}
	})
	if _, err := c.lines.wait(30*time.Second, func(r map[string]any) bool { return r["ev"] == "ready" }); err != nil {
		t.Fatalf("socket.io harness not ready: %v\n%s", err, c.lines.text())
	}
	return c
}

func (c *sioClient) send(cmd map[string]any) {
	c.t.Helper()
	b, _ := json.Marshal(cmd)
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		c.t.Fatalf("socket.io harness: %v", err)
	}
}

// connect opens socket name as the owner of token and waits for its
// connect.
func (c *sioClient) connect(name, url, token string, reconnect bool) {
	c.t.Helper()
	c.send(map[string]any{"op": "connect", "name": name, "url": url,
		"opts": map[string]any{"auth": map[string]string{"token": token}, "reconnection": reconnect}})
	rec, err := c.lines.wait(30*time.Second, func(r map[string]any) bool {
		return r["name"] == name && (r["ev"] == "connect" || r["ev"] == "connect_error")
	})
	if err != nil || rec["ev"] != "connect" {
		c.t.Fatalf("socket %s did not connect: %v %v\n%s", name, rec, err, c.lines.text())
	}
}

// sioEvent is one asset_processed event a socket received.
type sioEvent struct {
	Socket string
	Data   json.RawMessage
}

// events returns every asset_processed event received so far.
func (c *sioClient) events() []sioEvent {
	var out []sioEvent
	for _, r := range c.lines.records(func(r map[string]any) bool {
		return r["ev"] == "event" && r["event"] == "asset_processed"
	}) {
		// With connection state recovery on, the server appends the
		// offset, the event's eventId, as a last argument.
		args, _ := r["args"].([]any)
		var ev struct{ EventID string }
		if len(args) == 2 {
			b, _ := json.Marshal(args[0])
			json.Unmarshal(b, &ev)
		}
		if len(args) != 2 || ev.EventID == "" || args[1] != ev.EventID {
			c.t.Errorf("asset_processed arguments %v, want the event and its eventId as the offset", args)
			continue
		}
		b, _ := json.Marshal(args[0])
		name, _ := r["name"].(string)
		out = append(out, sioEvent{Socket: name, Data: b})
	}
	return out
}

// waitAssets waits until events for n distinct assets have arrived.
func (c *sioClient) waitAssets(n int, timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, timeout, fmt.Sprintf("asset_processed events for %d assets", n), func() bool {
		seen := map[string]bool{}
		for _, e := range c.events() {
			var ev struct{ AssetID string }
			json.Unmarshal(e.Data, &ev)
			seen[ev.AssetID] = true
		}
		return len(seen) >= n
	})
}
