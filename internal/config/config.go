// Package config reads the service's settings from environment variables,
// each also accepted as a command-line flag of the same meaning
// (ADDR ↔ -addr, JWT_SECRET ↔ -jwt-secret, ...). A flag wins over its variable.
// Invalid values stop start-up with an error naming the variable.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config is every setting of the service. The zero value is not valid; use Load.
type Config struct {
	Addr    string
	DataDir string

	JWTSecret string // empty on the embedded default: generated into DataDir
	// JWTPreviousSecret, while a rotation is under way, is the secret being
	// rotated out: tokens it signed are still accepted, none is signed with it.
	JWTPreviousSecret string

	MongoURI string
	RedisURL string
	BlobURL  string // "" (DATA_DIR/blobs), file:///dir or s3://bucket/prefix?...

	AIServiceURL   string
	AIServiceToken string
	AITimeout      time.Duration

	WorkerConcurrency int
	JobMaxRetries     int
	JobBackoff        time.Duration

	MaxFiles     int
	MaxFileBytes int64
	MaxPixels    int64
	UploadRate   int // upload requests per minute per user; 0: unlimited

	EventRetention time.Duration // how long each user's events are kept for catching up

	LogLevel  slog.Level
	LogFormat string // json or text

	PprofAddr string // loopback address of net/http/pprof; "": off

	// OTLPEndpoint is the OTLP/HTTP collector's base URL; "": tracing off.
	OTLPEndpoint string
	// ServiceName is the traces' service.name. Defaults to "klectr".
	ServiceName string
}

// setting is one variable, its flag name, default and parser.
type setting struct {
	env, def, usage string
	set             func(c *Config, v string) error
}

var settings = []setting{
	{"ADDR", ":8080", "listen address (HTTP API and Socket.IO)", func(c *Config, v string) error {
		if v == "" {
			return errors.New("must not be empty")
		}
		c.Addr = v
		return nil
	}},
	{"DATA_DIR", "./data", "SQLite file, uploaded images, generated dev secret", func(c *Config, v string) error {
		if v == "" {
			return errors.New("must not be empty")
		}
		c.DataDir = v
		return nil
	}},
	{"JWT_SECRET", "", "HS256 key (at least 32 bytes); generated into DATA_DIR when unset on the embedded default", func(c *Config, v string) error {
		if v != "" && len(v) < 32 {
			return errors.New("must be at least 32 bytes")
		}
		c.JWTSecret = v
		return nil
	}},
	{"JWT_PREVIOUS_SECRET", "", "during a JWT_SECRET rotation, the old secret: tokens it signed are still accepted until they expire", func(c *Config, v string) error {
		if v != "" && len(v) < 32 {
			return errors.New("must be at least 32 bytes")
		}
		c.JWTPreviousSecret = v
		return nil
	}},
	{"MONGODB_URI", "", "MongoDB asset store (unset: SQLite in DATA_DIR)", func(c *Config, v string) error {
		if v != "" && !strings.HasPrefix(v, "mongodb://") && !strings.HasPrefix(v, "mongodb+srv://") {
			return errors.New("must start with mongodb:// or mongodb+srv://")
		}
		c.MongoURI = v
		return nil
	}},
	{"REDIS_URL", "", "Redis queue and event fan-out (unset: embedded queue, in-process events)", func(c *Config, v string) error {
		if v != "" && !strings.HasPrefix(v, "redis://") && !strings.HasPrefix(v, "rediss://") {
			return errors.New("must start with redis:// or rediss://")
		}
		c.RedisURL = v
		return nil
	}},
	{"BLOB_URL", "", "uploaded images: file:///shared/dir or s3://bucket/prefix?endpoint=… (unset: DATA_DIR/blobs)", func(c *Config, v string) error {
		if v == "" {
			c.BlobURL = ""
			return nil
		}
		u, err := url.Parse(v)
		switch {
		case err != nil:
			return errors.New("must be a file:// or s3:// URL")
		case u.Scheme == "file":
			if u.Host != "" || !strings.HasPrefix(u.Path, "/") || u.RawQuery != "" {
				return errors.New("a file URL takes an absolute path and nothing else: file:///srv/klectr/blobs")
			}
		case u.Scheme == "s3":
			// The rest is checked where the S3 store is built.
		default:
			return errors.New("must start with file:// or s3://")
		}
		c.BlobURL = v
		return nil
	}},
	{"AI_SERVICE_URL", "", "AI service base URL (unset: built-in analyzer)", func(c *Config, v string) error {
		if v != "" {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return errors.New("must be an http(s) URL")
			}
		}
		c.AIServiceURL = strings.TrimRight(v, "/")
		return nil
	}},
	{"AI_SERVICE_TOKEN", "", "bearer token sent to the AI service", func(c *Config, v string) error {
		c.AIServiceToken = v
		return nil
	}},
	{"AI_TIMEOUT", "30s", "per-request deadline of an AI call", func(c *Config, v string) (err error) {
		c.AITimeout, err = positiveDuration(v)
		return err
	}},
	{"WORKER_CONCURRENCY", "16", "jobs at once per process", func(c *Config, v string) (err error) {
		c.WorkerConcurrency, err = intIn(v, 1, 1000)
		return err
	}},
	{"JOB_MAX_RETRIES", "3", "retries after the first attempt", func(c *Config, v string) (err error) {
		c.JobMaxRetries, err = intIn(v, 0, 100)
		return err
	}},
	{"JOB_BACKOFF", "2s", "first retry delay, doubled each retry, with jitter", func(c *Config, v string) (err error) {
		c.JobBackoff, err = positiveDuration(v)
		return err
	}},
	{"MAX_FILES", "10", "files per upload request", func(c *Config, v string) (err error) {
		c.MaxFiles, err = intIn(v, 1, 1000)
		return err
	}},
	{"MAX_FILE_BYTES", "10MiB", "bytes per file (e.g. 10MiB, 500KB, 1048576)", func(c *Config, v string) (err error) {
		c.MaxFileBytes, err = ParseBytes(v)
		if err == nil && c.MaxFileBytes <= 0 {
			err = errors.New("must be positive")
		}
		return err
	}},
	{"MAX_PIXELS", "50000000", "pixels per image, read from its header", func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return errors.New("must be a positive integer")
		}
		c.MaxPixels = n
		return nil
	}},
	{"UPLOAD_RATE", "120", "upload requests per minute per user, in bursts of up to a sixth of it (0: unlimited)", func(c *Config, v string) (err error) {
		c.UploadRate, err = intIn(v, 0, 1_000_000)
		return err
	}},
	{"EVENT_RETENTION", "168h", "how long each user's asset_processed events are kept for catching up", func(c *Config, v string) (err error) {
		c.EventRetention, err = positiveDuration(v)
		return err
	}},
	{"LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, v string) error {
		return c.LogLevel.UnmarshalText([]byte(v))
	}},
	{"LOG_FORMAT", "json", "json or text", func(c *Config, v string) error {
		if v != "json" && v != "text" {
			return errors.New("must be json or text")
		}
		c.LogFormat = v
		return nil
	}},
	{"PPROF_ADDR", "", "loopback address of the profiling endpoint /debug/pprof/, e.g. 127.0.0.1:6060 (unset: off)", func(c *Config, v string) error {
		if v != "" && !loopback(v) {
			return errors.New("must be a loopback host:port such as 127.0.0.1:6060 or localhost:6060: profiles expose the process's memory and must not be reachable from the network")
		}
		c.PprofAddr = v
		return nil
	}},
	{"OTEL_EXPORTER_OTLP_ENDPOINT", "", "OpenTelemetry collector base URL (OTLP over HTTP, e.g. http://localhost:4318); spans go to {url}/v1/traces (unset: tracing off)", func(c *Config, v string) error {
		if v != "" {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
				return errors.New("must be an http(s) URL such as http://localhost:4318")
			}
		}
		c.OTLPEndpoint = v
		return nil
	}},
	{"OTEL_SERVICE_NAME", "klectr", "service.name of the traces", func(c *Config, v string) error {
		if v == "" {
			return errors.New("must not be empty")
		}
		c.ServiceName = v
		return nil
	}},
}

// loopback reports whether addr is host:port with a loopback host.
func loopback(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// flagName turns AI_SERVICE_URL into ai-service-url.
func flagName(env string) string { return strings.ReplaceAll(strings.ToLower(env), "_", "-") }

// Load reads the settings from getenv, then from args (flags), and validates
// them. It returns the remaining positional arguments. extra, if not nil,
// registers a subcommand's own flags on the same set.
func Load(name string, args []string, getenv func(string) string, stderr io.Writer, extra func(*flag.FlagSet)) (*Config, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if extra != nil {
		extra(fs)
	}
	values := make([]string, len(settings))
	for i, s := range settings {
		v := getenv(s.env)
		if v == "" {
			v = s.def
		}
		values[i] = v
		fs.StringVar(&values[i], flagName(s.env), v, s.usage+" ($"+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	c := &Config{}
	var errs []error
	for i, s := range settings {
		if err := s.set(c, values[i]); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", s.env, values[i], err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	return c, fs.Args(), nil
}

// Validate checks the rules that span settings. The two shapes are the only
// ones: MONGODB_URI and REDIS_URL together, or neither. A store or a queue in
// a local SQLite file next to a shared one would look like it works while
// each machine kept its own assets or jobs.
func (c *Config) Validate() error {
	switch {
	case c.MongoURI != "" && c.RedisURL == "":
		return errors.New("MONGODB_URI is set without REDIS_URL: the scale-out shape needs both (jobs and events go through Redis); set REDIS_URL, or unset MONGODB_URI for the embedded default")
	case c.RedisURL != "" && c.MongoURI == "":
		return errors.New("REDIS_URL is set without MONGODB_URI: the scale-out shape needs both (every process must read the same assets); set MONGODB_URI, or unset REDIS_URL for the embedded default")
	case c.JWTSecret == "" && !c.Embedded():
		return errors.New("JWT_SECRET: required when MONGODB_URI or REDIS_URL is set (every process must share it)")
	case c.JWTPreviousSecret != "" && c.JWTSecret == "":
		return errors.New("JWT_PREVIOUS_SECRET: set only beside JWT_SECRET, during a rotation from it to JWT_SECRET")
	case c.JWTPreviousSecret != "" && c.JWTPreviousSecret == c.JWTSecret:
		return errors.New("JWT_PREVIOUS_SECRET: equals JWT_SECRET; it must be the old secret being rotated out")
	}
	return nil
}

// BlobDir is the directory of the disk blob store: BLOB_URL's path when it
// is a file URL, DATA_DIR/blobs when BLOB_URL is unset, "" for S3.
func (c *Config) BlobDir() string {
	if c.BlobURL == "" {
		return filepath.Join(c.DataDir, "blobs")
	}
	if u, err := url.Parse(c.BlobURL); err == nil && u.Scheme == "file" {
		return filepath.Clean(u.Path)
	}
	return ""
}

// Embedded reports whether the service runs on its embedded backends.
func (c *Config) Embedded() bool { return c.MongoURI == "" && c.RedisURL == "" }

func positiveDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, errors.New("must be a positive duration such as 2s or 500ms")
	}
	return d, nil
}

func intIn(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("must be an integer from %d to %d", lo, hi)
	}
	return n, nil
}

// ParseBytes reads a size such as 10MiB, 500KB, 2MB or a plain byte count.
// KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024.
func ParseBytes(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, errors.New("must be a size such as 10MiB, 500KB or 1048576")
	}
	return n * mult, nil
}

// Usage writes every setting, its variable and default.
func Usage(w io.Writer) {
	for _, s := range settings {
		fmt.Fprintf(w, "  -%-20s $%-18s default %-10q %s\n", flagName(s.env), s.env, s.def, s.usage)
	}
}
