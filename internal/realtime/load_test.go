package realtime_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/testenv"
)

// TestLoad measures event lag, memory and throughput with many official
// clients (test/e2e/load.mjs), one user each. It runs only when asked:
//
//	KLECTR_E2E_DIR=$PWD/test/e2e KLECTR_LOAD=1000 [KLECTR_LOAD_TRANSPORT=websocket|default|polling] \
//	  go test -run '^TestLoad$' -v -count=1 ./internal/realtime/
//
// Phase 1 sends 10,000 events at 2,000/s for lag; phase 2 sends 50,000 as
// fast as Send returns, for events/s. Both fail on any missing, duplicated or
// misdelivered event. Everything stays on loopback and ends by itself.
func TestLoad(t *testing.T) {
	clients, _ := strconv.Atoi(os.Getenv("KLECTR_LOAD"))
	if clients <= 0 {
		t.Skip("set KLECTR_LOAD=<clients> (and KLECTR_E2E_DIR) to measure lag, memory and events/s")
	}
	dir := testenv.SocketIOClientDir(t)
	transport := os.Getenv("KLECTR_LOAD_TRANSPORT")
	opts := map[string]any{}
	switch transport {
	case "", "websocket":
		transport, opts["transports"] = "websocket", []string{"websocket"}
	case "polling":
		opts["transports"] = []string{"polling"}
	case "default":
	default:
		t.Fatalf("KLECTR_LOAD_TRANSPORT=%q: want websocket, default or polling", transport)
	}

	ts := startServer(t, "", nil, func(o *realtime.Options) {
		o.MaxPendingPerIP = -1 // every client comes from loopback
		o.Logger = slog.New(slog.DiscardHandler)
		o.MaxConnsPerUser = -1
	})
	base := memory()

	cmd := exec.Command(testenv.Node(t), filepath.Join(dir, "load.mjs"))
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = fmt.Fprintln(stdin, `{"op":"exit"}`)
		_ = cmd.Wait()
	})
	events := make(chan map[string]any, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				events <- m
			}
		}
		close(events)
	}()
	next := func(want string, timeout time.Duration) map[string]any {
		t.Helper()
		deadline := time.After(timeout)
		for {
			select {
			case m, ok := <-events:
				if !ok {
					t.Fatalf("load.mjs exited while waiting for %s", want)
				}
				if m["ev"] == want {
					return m
				}
				t.Logf("load.mjs: %v", m)
				if m["ev"] == "error" {
					t.Fatalf("load.mjs failed")
				}
			case <-deadline:
				t.Fatalf("no %s from load.mjs within %v", want, timeout)
			}
		}
	}

	type client struct {
		User  string `json:"user"`
		Token string `json:"token"`
	}
	cfg := struct {
		URL     string         `json:"url"`
		Clients []client       `json:"clients"`
		Opts    map[string]any `json:"opts"`
	}{URL: ts.url, Opts: opts}
	users := make([]string, clients)
	for i := range clients {
		users[i] = fmt.Sprint("load-", i)
		cfg.Clients = append(cfg.Clients, client{users[i], validToken(users[i])})
	}
	line, _ := json.Marshal(cfg)
	_, _ = fmt.Fprintf(stdin, "%s\n", line)
	ready := next("ready", 5*time.Minute)
	if n := ts.ConnectedSockets(); n != clients {
		t.Fatalf("%d sockets registered, want %d", n, clients)
	}
	loaded := memory()
	t.Logf("%d clients (%s) connected in %.0f ms, final transports %v", clients, transport, ready["connectMs"], ready["transports"])
	t.Logf("memory: heap in use %.1f → %.1f MiB (%.1f KiB per socket), RSS %.1f → %.1f MiB, goroutines %d → %d",
		mib(base.heap), mib(loaded.heap), float64(loaded.heap-base.heap)/1024/float64(clients),
		mib(base.rss), mib(loaded.rss), base.goroutines, loaded.goroutines)

	ctx := context.Background()
	seq := 0
	sendOne := func() {
		user := users[seq%clients]
		ev := assetEvent(user, seq)
		ev.EventID = fmt.Sprintf("%d-%d", seq, time.Now().UnixMicro())
		seq++
		if err := ts.Send(ctx, user, pipeline.EventAssetProcessed, ev); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	check := func(phase string, n int, elapsed time.Duration) {
		t.Helper()
		r := next("report", time.Minute)
		t.Logf("%s: %v events in %v (%.0f events/s); lag ms p50 %.2f p90 %.2f p99 %.2f max %.2f",
			phase, r["received"], elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), r["p50"], r["p90"], r["p99"], r["max"])
		if r["received"] != float64(n) || r["duplicates"] != 0.0 || r["misdelivered"] != 0.0 {
			t.Errorf("%s: received %v of %d, %v duplicated, %v misdelivered", phase, r["received"], n, r["duplicates"], r["misdelivered"])
		}
	}

	// Phase 1: a steady 2,000 events/s for 5 s.
	const rate, seconds = 2000, 5
	_, _ = fmt.Fprintf(stdin, `{"op":"expect","n":%d}`+"\n", rate*seconds)
	tick := time.NewTicker(time.Millisecond)
	start := time.Now()
	for i := 0; i < rate*seconds; {
		<-tick.C
		for due := int(time.Since(start).Seconds() * rate); i < due && i < rate*seconds; i++ {
			sendOne()
		}
	}
	tick.Stop()
	next("reached", time.Minute)
	elapsed := time.Since(start)
	_, _ = fmt.Fprintln(stdin, `{"op":"report"}`)
	check("steady 2000/s", rate*seconds, elapsed)

	// Phase 2: as fast as possible.
	const burst = 50000
	_, _ = fmt.Fprintf(stdin, `{"op":"expect","n":%d}`+"\n", burst)
	start = time.Now()
	for range burst {
		sendOne()
	}
	next("reached", 2*time.Minute)
	elapsed = time.Since(start)
	_, _ = fmt.Fprintln(stdin, `{"op":"report"}`)
	check("burst", burst, elapsed)
	peak := memory()
	t.Logf("memory after the burst: heap in use %.1f MiB, RSS %.1f MiB", mib(peak.heap), mib(peak.rss))
}

type memStats struct {
	heap, rss  uint64
	goroutines int
}

func memory() memStats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := memStats{heap: ms.HeapInuse, goroutines: runtime.NumGoroutine()}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				m.rss = kb * 1024
			}
		}
	}
	return m
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
