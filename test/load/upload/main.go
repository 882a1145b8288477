// Command upload is a bounded load generator for POST /api/assets/analyze-queue.
//
// It sends the same multipart body (one or more copies of a JPEG in field
// "images") from -c workers until -n requests have been sent or -duration has
// passed, whichever comes first, then prints the request count, the errors by
// status, uploads/s and the latency percentiles. With -wait it then polls the
// assets API until every accepted asset is final (draft or failed) and prints
// the jobs/s end to end. With -pid it reads the server's peak RSS (VmHWM) and
// CPU time from /proc.
//
// It talks to loopback addresses only: it is a tool for measuring a klectr on
// the same machine, not for loading anything else. See ../README.md.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/jpeg"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	url         string
	token       string
	dataDir     string
	klectr      string
	user        string
	imagePath   string
	jpegBytes   int
	saveImage   string
	concurrency int
	requests    int
	duration    time.Duration
	files       int
	timeout     time.Duration
	wait        bool
	waitTimeout time.Duration
	poll        time.Duration
	pid         int
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "upload:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	flag.StringVar(&o.url, "url", "http://127.0.0.1:8080", "base URL of klectr (loopback only)")
	flag.StringVar(&o.token, "token", os.Getenv("KLECTR_TOKEN"), "JWT to upload with ($KLECTR_TOKEN); or use -data-dir")
	flag.StringVar(&o.dataDir, "data-dir", "", "DATA_DIR of the server: mint a token with `klectr token` instead of -token")
	flag.StringVar(&o.klectr, "klectr", "klectr", "klectr binary used with -data-dir")
	flag.StringVar(&o.user, "user", "", "user id of the minted token (default load-<unix nanos>, so each run has its own assets)")
	flag.StringVar(&o.imagePath, "image", "", "image file to upload (default: a generated 640x480 JPEG of about -jpeg-bytes)")
	flag.IntVar(&o.jpegBytes, "jpeg-bytes", 100_000, "target size of the generated JPEG")
	flag.StringVar(&o.saveImage, "save-image", "", "also write the generated JPEG to this file")
	flag.IntVar(&o.concurrency, "c", 50, "concurrent requests")
	flag.IntVar(&o.requests, "n", 2000, "total requests (0: until -duration)")
	flag.DurationVar(&o.duration, "duration", 5*time.Minute, "stop starting requests after this long")
	flag.IntVar(&o.files, "files", 1, "files per request")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "per-request timeout")
	flag.BoolVar(&o.wait, "wait", false, "after the uploads, wait until every accepted asset is final and print jobs/s")
	flag.DurationVar(&o.waitTimeout, "wait-timeout", 10*time.Minute, "give up waiting after this long")
	flag.DurationVar(&o.poll, "poll", 200*time.Millisecond, "poll interval while waiting")
	flag.IntVar(&o.pid, "pid", 0, "pid of the klectr process: print its peak RSS (VmHWM) and CPU time")
	flag.Parse()

	switch {
	case o.concurrency < 1 || o.concurrency > 1000:
		return errors.New("-c must be from 1 to 1000")
	case o.requests < 0 || o.requests > 1_000_000:
		return errors.New("-n must be from 0 to 1000000")
	case o.duration <= 0 || o.duration > time.Hour:
		return errors.New("-duration must be positive and at most 1h")
	case o.files < 1:
		return errors.New("-files must be at least 1")
	case o.waitTimeout <= 0 || o.waitTimeout > time.Hour:
		return errors.New("-wait-timeout must be positive and at most 1h")
	case o.poll <= 0:
		return errors.New("-poll must be positive")
	}
	base, err := loopbackURL(o.url)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	token, err := tokenFor(ctx, o)
	if err != nil {
		return err
	}
	img, err := loadImage(o)
	if err != nil {
		return err
	}
	body, contentType, err := multipartBody(img, o.files)
	if err != nil {
		return err
	}
	fmt.Printf("target %s  image %d bytes x %d per request (%d bytes body)  c=%d n=%d duration<=%s\n",
		base, len(img), o.files, len(body), o.concurrency, o.requests, o.duration)

	hc := &http.Client{
		Timeout: o.timeout,
		Transport: &http.Transport{
			MaxIdleConns:        o.concurrency,
			MaxIdleConnsPerHost: o.concurrency,
			MaxConnsPerHost:     o.concurrency,
			IdleConnTimeout:     30 * time.Second,
		},
	}
	c := client{hc: hc, base: base, token: token}

	cpu0, _ := procCPU(o.pid)
	res := upload(ctx, c, o, body, contentType)
	res.print(o.files)
	if o.pid > 0 {
		printProc(o.pid, "after uploads", cpu0, res.accepted())
	}

	if o.wait && len(res.assetIDs) > 0 {
		if err := waitFinal(ctx, c, o, res); err != nil {
			return err
		}
		if o.pid > 0 {
			printProc(o.pid, "after processing", cpu0, res.accepted())
		}
	}
	if res.failed() > 0 {
		return fmt.Errorf("%d of %d requests failed", res.failed(), res.total())
	}
	return nil
}

// loopbackURL parses raw and refuses any host that is not (or does not
// resolve only to) a loopback address.
func loopbackURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-url %q: want http://127.0.0.1:PORT", raw)
	}
	ips, err := net.DefaultResolver.LookupIPAddr(context.Background(), u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("-url %q: %w", raw, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return nil, fmt.Errorf("-url %q: %s is not a loopback address; this tool only loads a local server", raw, ip.IP)
		}
	}
	return u, nil
}

// tokenFor is -token, or a token minted for -user with `klectr token` on -data-dir.
func tokenFor(ctx context.Context, o options) (string, error) {
	if o.token != "" {
		return o.token, nil
	}
	if o.dataDir == "" {
		return "", errors.New("want -token (or $KLECTR_TOKEN) or -data-dir")
	}
	user := o.user
	if user == "" {
		user = fmt.Sprintf("load-%d", time.Now().UnixNano())
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(tctx, o.klectr, "token", "-data-dir", o.dataDir, user)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s token: %w", o.klectr, err)
	}
	fmt.Printf("user %s\n", user)
	return strings.TrimSpace(string(out)), nil
}

func loadImage(o options) ([]byte, error) {
	if o.imagePath != "" {
		return os.ReadFile(o.imagePath)
	}
	img, err := noisyJPEG(o.jpegBytes)
	if err != nil {
		return nil, err
	}
	if o.saveImage != "" {
		if err := os.WriteFile(o.saveImage, img, 0o644); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// noisyJPEG encodes a 640x480 gradient with fixed-seed noise at the quality
// whose size is nearest target, so that every run uploads the same bytes and
// the built-in analyzer has real pixels to work on.
func noisyJPEG(target int) ([]byte, error) {
	const w, h, amp = 640, 480, 64
	img := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio420)
	r := rand.New(rand.NewPCG(1, 2))
	for y := range h {
		for x := range w {
			v := (x*255/w+y*255/h)/2 + r.IntN(amp+1) - amp/2
			img.Y[y*img.YStride+x] = uint8(min(max(v, 0), 255))
		}
	}
	for i := range img.Cb {
		img.Cb[i] = uint8(96 + r.IntN(64))
		img.Cr[i] = uint8(96 + r.IntN(64))
	}
	encode := func(q int) ([]byte, error) {
		var b bytes.Buffer
		err := jpeg.Encode(&b, img, &jpeg.Options{Quality: q})
		return b.Bytes(), err
	}
	// Size grows with quality: bisect for the first quality at or over target.
	lo, hi := 1, 100
	for lo < hi {
		mid := (lo + hi) / 2
		b, err := encode(mid)
		if err != nil {
			return nil, err
		}
		if len(b) < target {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	best, err := encode(lo)
	if err != nil {
		return nil, err
	}
	if lo > 1 {
		if b, err := encode(lo - 1); err == nil && target-len(b) < len(best)-target {
			best = b
		}
	}
	return best, nil
}

// multipartBody builds one request body with files copies of img in field
// "images"; every request sends these same bytes.
func multipartBody(img []byte, files int) ([]byte, string, error) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for i := range files {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="images"; filename="load-%d.jpg"`, i))
		h.Set("Content-Type", "image/jpeg")
		pw, err := mw.CreatePart(h)
		if err != nil {
			return nil, "", err
		}
		if _, err := pw.Write(img); err != nil {
			return nil, "", err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, "", err
	}
	return b.Bytes(), mw.FormDataContentType(), nil
}

type client struct {
	hc    *http.Client
	base  *url.URL
	token string
}

func (c client) do(ctx context.Context, method, path string, body io.Reader, contentType string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, body)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, err
}

// result is what the upload phase saw.
type result struct {
	start, end time.Time
	latencies  []time.Duration // of every request that got a response
	byStatus   map[int]int
	transport  map[string]int // requests that got no response, by error
	samples    map[int]string // first body of each non-202 status
	assetIDs   []string
}

func (r *result) total() int {
	n := len(r.latencies)
	for _, v := range r.transport {
		n += v
	}
	return n
}

func (r *result) accepted() int { return len(r.assetIDs) }

func (r *result) failed() int { return r.total() - r.byStatus[http.StatusAccepted] }

// upload runs the workers. A request that has started is never cancelled by
// -duration (only by its own timeout or an interrupt), so that the end of the
// run does not count as errors.
func upload(ctx context.Context, c client, o options, body []byte, contentType string) *result {
	stopAt := time.Now().Add(o.duration)
	var next atomic.Int64
	var mu sync.Mutex
	res := &result{byStatus: map[int]int{}, transport: map[string]int{}, samples: map[int]string{}}
	if o.requests > 0 {
		res.latencies = make([]time.Duration, 0, o.requests)
		res.assetIDs = make([]string, 0, o.requests*o.files)
	}

	var wg sync.WaitGroup
	res.start = time.Now()
	for range o.concurrency {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(stopAt) {
				if i := next.Add(1); o.requests > 0 && i > int64(o.requests) {
					return
				}
				t0 := time.Now()
				status, b, err := c.do(ctx, http.MethodPost, "/api/assets/analyze-queue", bytes.NewReader(body), contentType)
				lat := time.Since(t0)
				var ids []string
				if err == nil && status == http.StatusAccepted {
					var out struct {
						Assets []struct {
							AssetID string `json:"assetId"`
						} `json:"assets"`
					}
					if jerr := json.Unmarshal(b, &out); jerr != nil {
						err = fmt.Errorf("202 with an unreadable body: %w", jerr)
					}
					for _, a := range out.Assets {
						ids = append(ids, a.AssetID)
					}
				}
				mu.Lock()
				switch {
				case err != nil && status == 0:
					res.transport[errKey(err)]++
				case err != nil:
					res.transport[fmt.Sprintf("status %d: %v", status, err)]++
				default:
					res.latencies = append(res.latencies, lat)
					res.byStatus[status]++
					if status != http.StatusAccepted {
						if _, ok := res.samples[status]; !ok {
							res.samples[status] = string(b[:min(len(b), 300)])
						}
					}
					res.assetIDs = append(res.assetIDs, ids...)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.end = time.Now()
	return res
}

// errKey groups transport errors without their per-connection details.
func errKey(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "broken pipe", "EOF"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	return s
}

func (r *result) print(files int) {
	el := r.end.Sub(r.start).Seconds()
	fmt.Printf("requests %d in %.2fs: %.1f requests/s, %.1f uploads/s (%d files accepted, %d per request)\n",
		r.total(), el, float64(r.total())/el, float64(r.accepted())/el, r.accepted(), files)
	statuses := slices.Sorted(func(yield func(int) bool) {
		for s := range r.byStatus {
			if !yield(s) {
				return
			}
		}
	})
	for _, s := range statuses {
		fmt.Printf("  status %d: %d\n", s, r.byStatus[s])
		if sample, ok := r.samples[s]; ok {
			fmt.Printf("    first body: %s\n", strings.TrimSpace(sample))
		}
	}
	for k, v := range r.transport {
		fmt.Printf("  no response (%s): %d\n", k, v)
	}
	if len(r.latencies) > 0 {
		p := percentiles(r.latencies)
		fmt.Printf("latency p50 %s  p90 %s  p99 %s  max %s\n", p(50), p(90), p(99), p(100))
	}
}

// percentiles sorts d and returns a nearest-rank percentile function.
func percentiles(d []time.Duration) func(float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return func(q float64) time.Duration {
		i := int(q/100*float64(len(s))+0.999999) - 1
		i = min(max(i, 0), len(s)-1)
		return s[i].Round(100 * time.Microsecond)
	}
}

type assetView struct {
	ID          string  `json:"id"`
	Status      string  `json:"status"`
	Attempts    int     `json:"attempts"`
	CreatedAt   string  `json:"createdAt"`
	ProcessedAt *string `json:"processedAt"`
	Error       *struct {
		Code string `json:"code"`
	} `json:"error"`
}

type page struct {
	Assets     []assetView `json:"assets"`
	NextCursor *string     `json:"nextCursor"`
}

// waitFinal polls until the user has no asset in processing, then reads
// every accepted asset back (from the list, newest first) and reports the
// throughput from the server's own createdAt/processedAt times.
func waitFinal(ctx context.Context, c client, o options, res *result) error {
	ctx, cancel := context.WithTimeout(ctx, o.waitTimeout)
	defer cancel()
	t := time.NewTicker(o.poll)
	defer t.Stop()
	lastNote := time.Now()
	for {
		var p page
		status, b, err := c.do(ctx, http.MethodGet, "/api/assets?status=processing&limit=1", nil, "")
		if err == nil && status == http.StatusOK {
			err = json.Unmarshal(b, &p)
			if err == nil && len(p.Assets) == 0 {
				break
			}
		} else if err == nil {
			err = fmt.Errorf("GET /api/assets: %d %s", status, bytes.TrimSpace(b))
		}
		if err != nil && ctx.Err() == nil {
			fmt.Printf("  poll: %v\n", err)
		}
		if time.Since(lastNote) >= 10*time.Second {
			left := "some"
			if status, b, err := c.do(ctx, http.MethodGet, "/api/assets?status=processing&limit=100", nil, ""); err == nil && status == http.StatusOK {
				var p page
				if json.Unmarshal(b, &p) == nil {
					left = strconv.Itoa(len(p.Assets))
					if p.NextCursor != nil {
						left = "over 100"
					}
				}
			}
			fmt.Printf("  %s assets still processing %.0fs after the last upload\n", left, time.Since(res.end).Seconds())
			lastNote = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for final states: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
	done := time.Now()

	want := make(map[string]bool, len(res.assetIDs))
	for _, id := range res.assetIDs {
		want[id] = true
	}
	var seen []assetView
	cursor := ""
	for len(seen) < len(want) {
		path := "/api/assets?limit=100"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		status, b, err := c.do(ctx, http.MethodGet, path, nil, "")
		if err != nil {
			return fmt.Errorf("listing assets: %w", err)
		}
		if status != http.StatusOK {
			return fmt.Errorf("listing assets: %d %s", status, bytes.TrimSpace(b))
		}
		var p page
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("listing assets: %w", err)
		}
		for _, a := range p.Assets {
			if want[a.ID] {
				seen = append(seen, a)
			}
		}
		if p.NextCursor == nil {
			break
		}
		cursor = *p.NextCursor
	}

	byStatus := map[string]int{}
	byError := map[string]int{}
	var first, last time.Time
	var created, processed []time.Time
	var queueLat []time.Duration
	retried := 0
	for _, a := range seen {
		byStatus[a.Status]++
		if a.Error != nil {
			byError[a.Error.Code]++
		}
		if a.Attempts > 1 {
			retried++
		}
		if a.ProcessedAt == nil {
			continue
		}
		pt, err1 := time.Parse(time.RFC3339Nano, *a.ProcessedAt)
		ct, err2 := time.Parse(time.RFC3339Nano, a.CreatedAt)
		if err1 != nil || err2 != nil {
			continue
		}
		if first.IsZero() || pt.Before(first) {
			first = pt
		}
		if pt.After(last) {
			last = pt
		}
		queueLat = append(queueLat, pt.Sub(ct))
		created, processed = append(created, ct), append(processed, pt)
	}
	fmt.Printf("final after %.2fs from the first upload (%.2fs after the last): %s\n",
		done.Sub(res.start).Seconds(), done.Sub(res.end).Seconds(), countList(byStatus))
	if len(byError) > 0 {
		fmt.Printf("  errors: %s\n", countList(byError))
	}
	if retried > 0 {
		fmt.Printf("  %d assets needed more than one attempt\n", retried)
	}
	if missing := len(want) - len(seen); missing > 0 {
		fmt.Printf("  MISSING: %d accepted assets not found in the list\n", missing)
	}
	if !last.IsZero() {
		e2e := last.Sub(res.start).Seconds()
		fmt.Printf("jobs/s end to end %.1f (%d jobs, first upload -> last processedAt %.2fs)\n",
			float64(len(queueLat))/e2e, len(queueLat), e2e)
		if span := last.Sub(first).Seconds(); len(queueLat) > 1 && span > 0 {
			fmt.Printf("jobs/s worker     %.1f (first -> last processedAt %.2fs)\n", float64(len(queueLat)-1)/span, span)
		}
		printPhases(created, processed)
		p := percentiles(queueLat)
		fmt.Printf("createdAt -> processedAt p50 %s  p90 %s  p99 %s  max %s\n", p(50), p(90), p(99), p(100))
	}
	return nil
}

// printPhases splits the worker's throughput at the last createdAt (the end
// of intake, by the server's clock): while uploads were still arriving, and
// after. The two differ when intake and the worker compete for the database.
func printPhases(created, processed []time.Time) {
	c0, c1 := slices.MinFunc(created, time.Time.Compare), slices.MaxFunc(created, time.Time.Compare)
	p1 := slices.MaxFunc(processed, time.Time.Compare)
	during := 0
	for _, p := range processed {
		if !p.After(c1) {
			during++
		}
	}
	after := len(processed) - during
	if d := c1.Sub(c0).Seconds(); d > 0 {
		fmt.Printf("jobs/s while uploading %.1f (%d jobs in %.2fs)\n", float64(during)/d, during, d)
	}
	if d := p1.Sub(c1).Seconds(); d > 0 && after > 0 {
		fmt.Printf("jobs/s after uploads   %.1f (%d jobs in %.2fs)\n", float64(after)/d, after, d)
	}
}

func countList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// procCPU is the user+system CPU time of pid, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line, in clock ticks (100 Hz on Linux).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unreadable times", pid)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// printProc prints the peak and current RSS of pid and the CPU it used
// since cpu0.
func printProc(pid int, when string, cpu0 time.Duration, jobs int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fmt.Printf("klectr %s: %v\n", when, err)
		return
	}
	defer f.Close()
	vals := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && (k == "VmHWM" || k == "VmRSS" || k == "Threads") {
			vals[k] = strings.TrimSpace(v)
		}
	}
	line := fmt.Sprintf("klectr %s: VmHWM %s  VmRSS %s  threads %s", when, vals["VmHWM"], vals["VmRSS"], vals["Threads"])
	if cpu, err := procCPU(pid); err == nil {
		line += fmt.Sprintf("  CPU %.1fs", (cpu - cpu0).Seconds())
		if jobs > 0 {
			line += fmt.Sprintf(" (%.2f ms per asset)", float64((cpu-cpu0).Milliseconds())/float64(jobs))
		}
	}
	fmt.Println(line)
}
