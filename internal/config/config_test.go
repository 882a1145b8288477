package config

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c, rest, err := Load("serve", nil, env(nil), io.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 0 {
		t.Fatalf("rest = %v", rest)
	}
	want := Config{
		Addr: ":8080", DataDir: "./data", AITimeout: 30 * time.Second,
		WorkerConcurrency: 16, JobMaxRetries: 3, JobBackoff: 2 * time.Second,
		MaxFiles: 10, MaxFileBytes: 10 << 20, MaxPixels: 50_000_000, UploadRate: 120,
		EventRetention: eventlog.DefaultRetention,
		LogLevel:       slog.LevelInfo, LogFormat: "json",
		ServiceName: "klectr",
	}
	if *c != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", *c, want)
	}
	if !c.Embedded() {
		t.Fatal("defaults are not embedded")
	}
}

func TestFlagOverridesEnv(t *testing.T) {
	t.Parallel()
	c, rest, err := Load("serve", []string{"-addr", "127.0.0.1:9", "-max-file-bytes", "500KB", "extra"},
		env(map[string]string{"ADDR": ":1", "WORKER_CONCURRENCY": "4", "AI_SERVICE_URL": "http://ai.local/"}), io.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9" || c.MaxFileBytes != 500_000 || c.WorkerConcurrency != 4 || c.AIServiceURL != "http://ai.local" {
		t.Fatalf("got %+v", c)
	}
	if len(rest) != 1 || rest[0] != "extra" {
		t.Fatalf("rest = %v", rest)
	}
}

func TestInvalidValuesNameTheVariable(t *testing.T) {
	t.Parallel()
	cases := map[string]map[string]string{
		"WORKER_CONCURRENCY":  {"WORKER_CONCURRENCY": "0"},
		"JOB_BACKOFF":         {"JOB_BACKOFF": "soon"},
		"MAX_FILE_BYTES":      {"MAX_FILE_BYTES": "10 potatoes"},
		"MAX_PIXELS":          {"MAX_PIXELS": "-1"},
		"AI_SERVICE_URL":      {"AI_SERVICE_URL": "ftp://x"},
		"LOG_LEVEL":           {"LOG_LEVEL": "loud"},
		"LOG_FORMAT":          {"LOG_FORMAT": "xml"},
		"UPLOAD_RATE":         {"UPLOAD_RATE": "-5"},
		"EVENT_RETENTION":     {"EVENT_RETENTION": "0s"},
		"JWT_SECRET":          {"JWT_SECRET": "short"},
		"JWT_PREVIOUS_SECRET": {"JWT_SECRET": strings.Repeat("k", 32), "JWT_PREVIOUS_SECRET": "short"},
		"REDIS_URL":           {"REDIS_URL": "localhost:6379"},
		"MONGODB_URI":         {"MONGODB_URI": "localhost"},
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, _, err := Load("serve", nil, env(m), io.Discard, nil)
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("err = %v, want one naming %s", err, name)
			}
		})
	}
}

func TestScaleOutRequiresSecret(t *testing.T) {
	t.Parallel()
	both := map[string]string{"REDIS_URL": "redis://127.0.0.1:6379", "MONGODB_URI": "mongodb://127.0.0.1:27017"}
	_, _, err := Load("serve", nil, env(both), io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "JWT_SECRET") {
		t.Fatalf("err = %v", err)
	}
	both["JWT_SECRET"] = strings.Repeat("k", 32)
	c, _, err := Load("serve", nil, env(both), io.Discard, nil)
	if err != nil || c.Embedded() {
		t.Fatalf("c = %+v, err = %v", c, err)
	}
}

// A rotation names the old secret beside a new one; alone, or equal to the
// new one, it is a mistake that would hide which secret signs.
func TestPreviousSecretOnlyDuringARotation(t *testing.T) {
	t.Parallel()
	newer, older := strings.Repeat("n", 32), strings.Repeat("o", 32)
	for _, m := range []map[string]string{
		{"JWT_PREVIOUS_SECRET": older},
		{"JWT_SECRET": newer, "JWT_PREVIOUS_SECRET": newer},
	} {
		if _, _, err := Load("serve", nil, env(m), io.Discard, nil); err == nil || !strings.Contains(err.Error(), "JWT_PREVIOUS_SECRET") {
			t.Errorf("%v: err = %v, want one naming JWT_PREVIOUS_SECRET", m, err)
		}
	}
	c, _, err := Load("serve", nil, env(map[string]string{"JWT_SECRET": newer, "JWT_PREVIOUS_SECRET": older}), io.Discard, nil)
	if err != nil || c.JWTPreviousSecret != older {
		t.Fatalf("c = %+v, err = %v", c, err)
	}
}

// Only the two shapes start: a store or queue half shared would split the
// deployment's data between machines without a word.
func TestMixedShapesAreRefused(t *testing.T) {
	t.Parallel()
	secret := strings.Repeat("k", 32)
	for name, m := range map[string]map[string]string{
		"MONGODB_URI is set without REDIS_URL": {"MONGODB_URI": "mongodb://127.0.0.1:27017", "JWT_SECRET": secret},
		"REDIS_URL is set without MONGODB_URI": {"REDIS_URL": "redis://127.0.0.1:6379", "JWT_SECRET": secret},
	} {
		if _, _, err := Load("serve", nil, env(m), io.Discard, nil); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%v: err = %v", m, err)
		}
	}
}

func TestBlobURL(t *testing.T) {
	t.Parallel()
	for v, dir := range map[string]string{
		"":                          "data/blobs",
		"file:///srv/klectr/blobs/": "/srv/klectr/blobs",
		"s3://bucket/prefix?endpoint=http://127.0.0.1:9000": "",
	} {
		c, _, err := Load("serve", []string{"-data-dir", "data"}, env(map[string]string{"BLOB_URL": v}), io.Discard, nil)
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if c.BlobURL != v || c.BlobDir() != dir {
			t.Errorf("%q: BlobURL %q, BlobDir %q, want dir %q", v, c.BlobURL, c.BlobDir(), dir)
		}
	}
	for _, v := range []string{"file://relative/dir", "file:///abs?x=1", "/srv/blobs", "gs://bucket", "http://x"} {
		if _, _, err := Load("serve", nil, env(map[string]string{"BLOB_URL": v}), io.Discard, nil); err == nil || !strings.Contains(err.Error(), "BLOB_URL") {
			t.Errorf("%q: err = %v, want one naming BLOB_URL", v, err)
		}
	}
}

func TestParseBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"10MiB": 10 << 20, "500KB": 500_000, "1048576": 1 << 20, "2 MB": 2_000_000, "1GiB": 1 << 30, "7B": 7} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5MB", "99999999999GiB"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) succeeded", in)
		}
	}
}

// Profiles expose the process's memory: the endpoint listens on loopback
// only, and any other address stops start-up naming the variable.
func TestPprofAddrIsLoopbackOnly(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"127.0.0.1:6060", "localhost:6060", "[::1]:6060", "127.0.0.2:0"} {
		c, _, err := Load("serve", nil, env(map[string]string{"PPROF_ADDR": v}), io.Discard, nil)
		if err != nil || c.PprofAddr != v {
			t.Errorf("%q: PprofAddr %q, err %v", v, c.PprofAddr, err)
		}
	}
	for _, v := range []string{":6060", "0.0.0.0:6060", "[::]:6060", "10.0.0.1:6060", "example.com:6060", "127.0.0.1", "localhost"} {
		if _, _, err := Load("serve", []string{"-pprof-addr", v}, env(nil), io.Discard, nil); err == nil || !strings.Contains(err.Error(), "PPROF_ADDR") {
			t.Errorf("%q: err = %v, want one naming PPROF_ADDR", v, err)
		}
	}
}

// Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; a value that
// is not an http(s) URL stops start-up naming the variable.
func TestOTLPEndpoint(t *testing.T) {
	t.Parallel()
	c, _, err := Load("serve", nil, env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "klectr-eu"}), io.Discard, nil)
	if err != nil || c.OTLPEndpoint != "http://collector:4318" || c.ServiceName != "klectr-eu" {
		t.Fatalf("OTLPEndpoint %q, ServiceName %q, err %v", c.OTLPEndpoint, c.ServiceName, err)
	}
	for _, v := range []string{"collector:4318", "grpc://collector:4317", "http://", "http://c:4318/?x=1"} {
		if _, _, err := Load("serve", []string{"-otel-exporter-otlp-endpoint", v}, env(nil), io.Discard, nil); err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_ENDPOINT") {
			t.Errorf("%q: err = %v, want one naming OTEL_EXPORTER_OTLP_ENDPOINT", v, err)
		}
	}
}

func TestEventRetention(t *testing.T) {
	t.Parallel()
	c, _, err := Load("serve", []string{"-event-retention", "36h"}, env(nil), io.Discard, nil)
	if err != nil || c.EventRetention != 36*time.Hour {
		t.Fatalf("EventRetention %v, err %v", c.EventRetention, err)
	}
	for _, v := range []string{"-1h", "week"} {
		if _, _, err := Load("serve", nil, env(map[string]string{"EVENT_RETENTION": v}), io.Discard, nil); err == nil || !strings.Contains(err.Error(), "EVENT_RETENTION") {
			t.Errorf("%q: err = %v, want one naming EVENT_RETENTION", v, err)
		}
	}
}
