// Package bench is `klectr bench`, the load generator of issue 9: it loads a
// running klectr on loopback the way phones do — N users, each with a
// Socket.IO connection in the official protocol, uploading at a fixed
// concurrency — and prints uploads/s, jobs/s, submit, end-to-end and
// event-lag percentiles, and any missing, duplicate or cross-user event.
// It fails (exit 1) when a request gets no 202, when an acknowledged
// asset's event has not reached its owner within -wait, or when an event
// reaches another user. With -baseline it first sends the same requests to
// an in-process bare multipart sink, so one command gives klectr's rate as
// a share of what net/http allows on the machine. With -fanout it measures
// the realtime path alone instead (RunFanout): event log, bus and Socket.IO
// in this process, at a fixed event rate.
//
// Everything is bounded: requests by -n and -duration (at most 1 h), each
// request by -timeout, the connecting and the wait for events by their own
// timeouts; it only talks to loopback addresses.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klectr/klectr/internal/auth"
)

// Options is one bench run.
type Options struct {
	URLs        []*url.URL // klectr, loopback only; several: one cluster's api processes
	Secret      []byte     // the server's JWT secret
	Users       int
	Concurrency int
	Requests    int           // 0: until Duration
	Duration    time.Duration // 0: until Requests
	Timeout     time.Duration // per request
	Wait        time.Duration // for events after the last upload
	Image       []byte
	PID         int // the server's process, for -pid; 0: none
	Baseline    bool
	// BaselineDir, with Baseline, adds a durable sink (durableSink) that
	// writes the files to this directory, after the bare one.
	BaselineDir string
}

// Defaults and bounds of the flags.
const (
	maxUsers       = 10_000
	maxConcurrency = 1_000
	maxRequests    = 1_000_000
	maxDuration    = time.Hour
	connectTimeout = 2 * time.Minute
	dialParallel   = 32 // sockets connecting at once
)

// Main is `klectr bench [flags]`; it returns the exit code: 0, 1 when the
// run failed (see the package doc), 2 for a wrong command line.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("klectr bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rawURL := fs.String("url", "http://127.0.0.1:8080", "base URL of the running klectr (loopback only); several, comma-separated, share the sockets and upload connections round robin")
	secret := fs.String("jwt-secret", "", "the server's JWT_SECRET, to mint the users' tokens (default $JWT_SECRET)")
	dataDir := fs.String("data-dir", "", "the embedded server's DATA_DIR: use the secret it generated there (when no JWT secret is given)")
	var o Options
	fs.IntVar(&o.Users, "users", 100, "users, each with one Socket.IO connection; uploads go to them round robin")
	fs.IntVar(&o.Concurrency, "c", 50, "uploads in flight at once")
	fs.IntVar(&o.Requests, "n", 1000, "uploads in all (0: until -duration)")
	fs.DurationVar(&o.Duration, "duration", 0, "stop starting uploads after this long (0: until -n; at most 1h)")
	fs.DurationVar(&o.Timeout, "timeout", time.Minute, "per-request timeout")
	fs.DurationVar(&o.Wait, "wait", time.Minute, "after the last upload, wait this long at most for the events still missing")
	imageBytes := fs.Int("image-bytes", 100_000, "size of the generated PNG (fixed-seed noise, the same bytes every run)")
	imagePath := fs.String("image", "", "upload this file instead of a generated PNG")
	fs.IntVar(&o.PID, "pid", 0, "the server's pid: print its peak RSS and CPU seconds from /proc")
	fs.BoolVar(&o.Baseline, "baseline", false, "first send the same requests to an in-process bare multipart sink and print the ratio")
	fs.StringVar(&o.BaselineDir, "baseline-dir", "", "with -baseline: then also to an in-process durable sink that writes and fsyncs each file in this directory (put it on klectr's disk) before its 202")
	fanout := fs.Bool("fanout", false, "measure the realtime path alone, in this process: event log + bus + Socket.IO to -users clients, at -rate events/s for -duration (default 10s)")
	var fo FanoutOptions
	fs.IntVar(&fo.Rate, "rate", 2000, "with -fanout: events per second, all users together")
	fs.IntVar(&fo.Publishers, "publishers", 50, "with -fanout: goroutines publishing at once (the worker's WORKER_CONCURRENCY)")
	fs.StringVar(&fo.CPUProfile, "cpuprofile", "", "with -fanout: write a CPU profile of the publishing phase to this file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "klectr bench: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	if *fanout {
		return mainFanout(ctx, fs, o, fo, stdout, stderr, usage)
	}
	var err error
	for raw := range strings.SplitSeq(*rawURL, ",") {
		u, err := loopbackURL(raw)
		if err != nil {
			return usage("%v", err)
		}
		o.URLs = append(o.URLs, u)
	}
	switch {
	case o.Users < 1 || o.Users > maxUsers:
		return usage("-users must be from 1 to %d", maxUsers)
	case o.Concurrency < 1 || o.Concurrency > maxConcurrency:
		return usage("-c must be from 1 to %d", maxConcurrency)
	case o.Requests < 0 || o.Requests > maxRequests:
		return usage("-n must be from 0 to %d", maxRequests)
	case o.Duration < 0 || o.Duration > maxDuration:
		return usage("-duration must be from 0 to %v", maxDuration)
	case o.Requests == 0 && o.Duration == 0:
		return usage("want -n or -duration")
	case o.Timeout <= 0 || o.Timeout > 10*time.Minute:
		return usage("-timeout must be positive and at most 10m")
	case o.Wait < 0 || o.Wait > time.Hour:
		return usage("-wait must be from 0 to 1h")
	case *imagePath == "" && (*imageBytes < 1 || *imageBytes > 64<<20):
		return usage("-image-bytes must be from 1 to 64 MiB")
	case o.PID < 0:
		return usage("-pid must be a process id")
	case o.BaselineDir != "" && !o.Baseline:
		return usage("-baseline-dir needs -baseline")
	}
	if *secret == "" {
		*secret = getenv("JWT_SECRET") // not the flag's default, which -h would print
	}
	if o.Secret, err = jwtSecret(*secret, *dataDir); err != nil {
		return usage("%v", err)
	}
	if *imagePath != "" {
		o.Image, err = readBounded(*imagePath, 64<<20)
	} else {
		o.Image, err = pngOf(*imageBytes)
	}
	if err != nil {
		fmt.Fprintf(stderr, "klectr bench: image: %v\n", err)
		return 1
	}

	reports, err := Run(ctx, o, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "klectr bench: %v\n", err)
		return 1
	}
	var problems []string
	for _, r := range reports {
		problems = append(problems, r.Problems()...)
	}
	if len(problems) > 0 {
		fmt.Fprintf(stdout, "FAIL: %s\n", strings.Join(problems, "; "))
		return 1
	}
	return 0
}

// jwtSecret is the secret given, or the one the embedded server generated
// into dataDir. A missing file is an error here, not a reason to create
// one: the server would not know it.
func jwtSecret(secret, dataDir string) ([]byte, error) {
	if secret != "" {
		if len(secret) < 32 {
			return nil, errors.New("-jwt-secret / JWT_SECRET must be at least 32 bytes")
		}
		return []byte(secret), nil
	}
	if dataDir == "" {
		return nil, errors.New("want -jwt-secret (or JWT_SECRET) or -data-dir")
	}
	// The file name is auth's (secretFile); LoadOrCreateSecret must not create it.
	if _, err := os.Stat(filepath.Join(dataDir, "jwt-secret")); err != nil {
		return nil, fmt.Errorf("-data-dir: %w (start the server with this DATA_DIR first)", err)
	}
	return auth.LoadOrCreateSecret(dataDir, slog.New(slog.DiscardHandler))
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%s is over %d bytes", path, limit)
	}
	return b, err
}

// loopbackURL parses raw and refuses any host that is not, or does not
// resolve only to, a loopback address: the bench loads a local server.
func loopbackURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-url %q: want http://127.0.0.1:PORT", raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("-url %q: %w", raw, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return nil, fmt.Errorf("-url %q: %s is not a loopback address", raw, ip.IP)
		}
	}
	return u, nil
}

// Run runs the bench and prints its reports to w: with Baseline the bare
// sink's first (and the durable sink's, with BaselineDir), then klectr's.
// An error means the run could not be made (no connection, say); a run
// made with failures returns reports whose Problems are not empty.
func Run(ctx context.Context, o Options, w io.Writer) ([]*Report, error) {
	run := time.Now()
	users := make([]string, o.Users)
	tokens := make([]string, o.Users)
	keys := auth.NewKeys(o.Secret, nil)
	ttl := connectTimeout + o.Wait + time.Hour + max(o.Duration, time.Duration(o.Requests)*o.Timeout/time.Duration(o.Concurrency))
	for i := range users {
		users[i] = fmt.Sprintf("bench-%x-%d", run.UnixNano(), i)
		tok, err := keys.Sign(users[i], "", min(ttl, 30*24*time.Hour))
		if err != nil {
			return nil, err
		}
		tokens[i] = tok
	}
	body, ctype, err := multipartBody(o.Image, "bench.png")
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "klectr bench: %s  users %d  c %d  n %d  duration %v  image %d bytes (body %d)  load average %s\n",
		joinURLs(o.URLs), o.Users, o.Concurrency, o.Requests, o.Duration, len(o.Image), len(body), loadavg())

	var reports []*Report
	if o.Baseline {
		type sinkRun struct {
			name string
			h    http.Handler
		}
		sinks := []sinkRun{{"sink", http.HandlerFunc(sinkHandler)}}
		if o.BaselineDir != "" {
			dir, err := os.MkdirTemp(o.BaselineDir, "klectr-bench-sink-")
			if err != nil {
				return nil, err
			}
			defer os.RemoveAll(dir)
			sinks = append(sinks, sinkRun{"durable sink", durableSink(dir)})
		}
		for _, s := range sinks {
			base, stop, err := startSink(s.h)
			if err != nil {
				return nil, err
			}
			t := newTracker()
			uploadAll(ctx, []string{base}, tokens, body, ctype, o, t)
			stop()
			ups, _ := t.snapshot()
			r := analyze(s.name, users, ups, nil, false)
			r.Print(w)
			reports = append(reports, r)
			if ctx.Err() != nil {
				return reports, ctx.Err()
			}
		}
	}

	r, err := runTarget(ctx, o, users, tokens, body, ctype, w)
	if err != nil {
		return reports, err
	}
	r.Print(w)
	reports = append(reports, r)
	for _, b := range reports[:len(reports)-1] {
		if b.UploadRate() > 0 {
			fmt.Fprintf(w, "baseline: %s %.1f uploads/s, klectr %.1f uploads/s: klectr at %.1f %% of the %s\n",
				b.Label, b.UploadRate(), r.UploadRate(), 100*r.UploadRate()/b.UploadRate(), b.Label)
		}
	}
	return reports, nil
}

// runTarget connects every user's socket, uploads, waits for the events and
// analyses what came back.
func runTarget(ctx context.Context, o Options, users, tokens []string, body []byte, ctype string, w io.Writer) (*Report, error) {
	t := newTracker()
	socks, err := connectAll(ctx, o.URLs, tokens)
	if err != nil {
		return nil, err
	}
	sctx, stopSockets := context.WithCancel(ctx)
	var wg sync.WaitGroup
	dropped := make([]error, len(socks)) // why each socket ended early, if it did
	for i, s := range socks {
		wg.Go(func() {
			defer s.close()
			dropped[i] = s.serve(sctx, func(ev Event, at time.Time) { t.addReceipt(receipt{socket: i, ev: ev, at: at}) })
		})
	}
	cleanup := func() {
		stopSockets()
		wg.Wait() // serve returns once sctx ends: its reads are under sctx
	}

	var cpu0 time.Duration
	if o.PID > 0 {
		if cpu0, err = procCPU(o.PID); err != nil {
			cleanup()
			return nil, fmt.Errorf("-pid: %w", err)
		}
	}
	bases := make([]string, len(o.URLs))
	for i, u := range o.URLs {
		bases[i] = u.String()
	}
	uploadAll(ctx, bases, tokens, body, ctype, o, t)
	if n := t.pending(); n > 0 && o.Wait > 0 {
		fmt.Fprintf(w, "klectr: uploads done; waiting up to %v for %d events\n", o.Wait, n)
	}
	t.waitAll(o.Wait, ctx.Done())
	var proc *ProcStats
	if o.PID > 0 {
		cpu, err1 := procCPU(o.PID)
		peak, err2 := procPeakRSS(o.PID)
		if err := errors.Join(err1, err2); err != nil {
			fmt.Fprintf(w, "  -pid %d: %v\n", o.PID, err)
		} else {
			proc = &ProcStats{PID: o.PID, PeakRSS: peak, CPU: cpu - cpu0}
		}
	}
	cleanup()

	ups, recs := t.snapshot()
	r := analyze("klectr", users, ups, recs, true)
	for _, err := range dropped {
		if err != nil {
			if r.Dropped == 0 {
				fmt.Fprintf(w, "klectr: a socket ended during the run: %v\n", err)
			}
			r.Dropped++
		}
	}
	r.Proc = proc
	return r, nil
}

// connectAll connects one socket per token, the i-th to bases[i%len(bases)],
// dialParallel at a time, within connectTimeout; it fails if any does not
// connect.
func connectAll(ctx context.Context, bases []*url.URL, tokens []string) ([]*socket, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	socks := make([]*socket, len(tokens))
	errs := make([]error, len(tokens))
	sem := make(chan struct{}, dialParallel)
	var wg sync.WaitGroup
	for i, tok := range tokens {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			socks[i], errs[i] = dialSocket(ctx, socketURL(bases[i%len(bases)]), tok)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, s := range socks {
			if s != nil {
				s.close()
			}
		}
		return nil, fmt.Errorf("connecting %d sockets to %s: %w", len(tokens), joinURLs(bases), firstErr(errs))
	}
	return socks, nil
}

func firstErr(errs []error) error {
	n := 0
	var first error
	for _, e := range errs {
		if e != nil {
			if first == nil {
				first = e
			}
			n++
		}
	}
	return fmt.Errorf("%d failed, the first: %w", n, first)
}

// uploadAll sends the uploads from o.Concurrency workers, user i%len(tokens)
// for the i-th, worker w to bases[w%len(bases)] (as a TCP balancer spreads
// connections, so one user's uploads reach every base), until o.Requests
// are sent or o.Duration has passed, and records each in t. A request that has started is left to finish (or to
// time out), so the end of the run does not count as failures.
func uploadAll(ctx context.Context, bases []string, tokens []string, body []byte, ctype string, o Options, t *tracker) {
	tr := &http.Transport{
		MaxIdleConnsPerHost: o.Concurrency,
		MaxConnsPerHost:     o.Concurrency,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: o.Timeout}
	var stopAt time.Time
	if o.Duration > 0 {
		stopAt = time.Now().Add(o.Duration)
	} else {
		stopAt = time.Now().Add(maxDuration)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range o.Concurrency {
		endpoint := bases[w%len(bases)] + "/api/assets/analyze-queue"
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(stopAt) {
				i := next.Add(1) - 1
				if o.Requests > 0 && i >= int64(o.Requests) {
					return
				}
				user := int(i % int64(len(tokens)))
				t.addUpload(post(ctx, hc, endpoint, tokens[user], body, ctype, user))
			}
		})
	}
	wg.Wait()
}

// post sends one upload and reads its reply.
func post(ctx context.Context, hc *http.Client, endpoint, token string, body []byte, ctype string, user int) upload {
	u := upload{user: user, start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		u.err, u.end = err.Error(), time.Now()
		return u
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", ctype)
	resp, err := hc.Do(req)
	if err != nil {
		u.err, u.end = errKey(err), time.Now()
		return u
	}
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	u.end, u.status = time.Now(), resp.StatusCode
	switch {
	case err != nil:
		u.err = "reading the reply: " + errKey(err)
	case resp.StatusCode != http.StatusAccepted:
		u.body = strings.TrimSpace(string(reply[:min(len(reply), 300)]))
	default:
		var out struct {
			Assets []struct {
				AssetID string `json:"assetId"`
			} `json:"assets"`
		}
		if err := json.Unmarshal(reply, &out); err != nil {
			u.err = "202 with an unreadable body"
		}
		for _, a := range out.Assets {
			u.assetIDs = append(u.assetIDs, a.AssetID)
		}
	}
	return u
}

// errKey groups transport errors without their per-connection details.
func errKey(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "broken pipe", "EOF", "context canceled"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	return s
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

func joinURLs(us []*url.URL) string {
	s := make([]string, len(us))
	for i, u := range us {
		s[i] = u.String()
	}
	return strings.Join(s, ",")
}
