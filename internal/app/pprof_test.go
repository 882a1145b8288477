package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// PPROF_ADDR serves the profiles on its own loopback listener, in every
// process kind, and never on the API's.
func TestPprofAddrServesProfilesApart(t *testing.T) {
	t.Parallel()
	for _, m := range []mode{modeServe, modeWorker} {
		t.Run(string(m), func(t *testing.T) {
			t.Parallel()
			s := startMode(t, m, map[string]string{"PPROF_ADDR": "127.0.0.1:0"})
			addr := pprofAddr(t, s)
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/debug/pprof/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), "goroutine") {
				t.Fatalf("GET /debug/pprof/: %d %.200s", resp.StatusCode, b)
			}
			if resp, b := s.do("GET", "/debug/pprof/", s.alice, nil, ""); resp.StatusCode != 404 {
				t.Fatalf("the API listener serves /debug/pprof/: %d %.200s", resp.StatusCode, b)
			}
			if code := s.shutdown(); code != 0 {
				t.Fatalf("exit %d:\n%s", code, s.logs.String())
			}
		})
	}
}

// pprofAddr is the address the profiling endpoint logged.
func pprofAddr(t *testing.T, s *server) string {
	t.Helper()
	for line := range strings.SplitSeq(s.logs.String(), "\n") {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "profiling endpoint listening" {
			return rec.Addr
		}
	}
	t.Fatalf("no profiling endpoint in the logs:\n%s", s.logs.String())
	return ""
}

func TestPprofAddrOffByDefault(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	if strings.Contains(s.logs.String(), "profiling endpoint") {
		t.Fatalf("a profiling endpoint started without PPROF_ADDR:\n%s", s.logs.String())
	}
}

func TestPprofAddrRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	for _, m := range []string{"serve", "api", "worker"} {
		var errb bytes.Buffer
		code := Run(context.Background(), []string{m}, envOf(map[string]string{
			"ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir(), "PPROF_ADDR": "0.0.0.0:6060",
		}), io.Discard, &errb)
		if code == 0 || !strings.Contains(errb.String(), "PPROF_ADDR") {
			t.Errorf("%s: exit %d; want a failure naming PPROF_ADDR:\n%s", m, code, errb.String())
		}
	}
}
