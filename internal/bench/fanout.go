package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/sqlitestore"
	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/sqlitelog"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/sqlitedb"
)

// FanoutOptions is one `klectr bench -fanout` run: the realtime path alone,
// at a fixed event rate, in this process.
type FanoutOptions struct {
	Users      int
	Rate       int           // events per second, all users together
	Duration   time.Duration // how long events are published
	Publishers int           // goroutines publishing, like the worker's handlers
	Wait       time.Duration // for events still missing after the last publish
	CPUProfile string        // file for a CPU profile of the publishing phase; "": none
}

// FanoutReport is what a fan-out run measured.
type FanoutReport struct {
	*Report                     // Missing, Duplicates, CrossUser, Lag, E2E, Dropped
	Scheduled   int             // events the schedule asked for
	SendErrors  int             // Notifier.Send calls that failed
	FirstErr    string          // the first of them
	Send        []time.Duration // each Notifier.Send, sorted
	Dispatch    []time.Duration // scheduled time → its Send started
	AfterSend   []time.Duration // its Send returned → received (negative: read before Send returned)
	PublishedIn time.Duration   // first scheduled time → last Send returned
	GCs         uint32
	GCPauseMax  time.Duration
	HeapPeak    uint64        // the largest HeapInuse sampled, bytes
	CPU         time.Duration // this process's user + system CPU while publishing (server and clients)
	Late        int           // events handed to a publisher more than 1 ms after their time
}

// Problems lists what makes the run fail.
func (r *FanoutReport) Problems() []string {
	p := r.Report.Problems()
	if r.SendErrors > 0 {
		p = append(p, fmt.Sprintf("fanout: %d publishes failed, the first: %s", r.SendErrors, r.FirstErr))
	}
	if r.Dropped > 0 {
		p = append(p, fmt.Sprintf("fanout: %d sockets ended during the run", r.Dropped))
	}
	return p
}

// RunFanout measures event lag on the path `klectr serve` publishes an
// asset_processed event on, without uploads, jobs or an AI: a SQLite event
// log (sqlitedb + sqlitelog, synchronous=FULL, in a fresh temporary
// directory, its appends committed in the asset store's groups of worker
// writes) behind eventlog.Notifier, the in-process LocalBus, and the
// realtime Server with the options `klectr serve` gives it, on a loopback
// listener. o.Users clients connect in the official protocol (this
// package's Socket.IO client); then o.Publishers goroutines call
// Notifier.Send, as the pipeline's handlers do, for o.Rate events per
// second, users round robin, each event's processedAt its scheduled time.
// An event whose publisher is busy waits, and its wait counts in its lag,
// so a server that cannot keep the rate shows it in the figures rather than
// in a slower schedule.
func RunFanout(ctx context.Context, o FanoutOptions, w io.Writer) (*FanoutReport, error) {
	dir, err := os.MkdirTemp("", "klectr-fanout-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	db, err := sqlitedb.Open(ctx, filepath.Join(dir, "klectr.db"))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	elog, err := sqlitelog.New(ctx, db)
	if err != nil {
		return nil, err
	}
	st, err := sqlitestore.New(ctx, db)
	if err != nil {
		return nil, err
	}
	elog.Group = st.Group // as internal/app wires the embedded shape
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	keys := auth.NewKeys(secret, nil)
	rt, err := realtime.New(realtime.Options{ // as internal/app's server.go
		Authenticate: func(token string) (string, time.Time, error) {
			c, err := keys.Verify(token)
			return c.UserID, c.ExpiresAt, err
		},
		Bus:          realtime.NewLocalBus(),
		Logger:       slog.New(slog.DiscardHandler),
		Backlog:      elog,
		BacklogEvent: pipeline.EventAssetProcessed,
	})
	if err != nil {
		return nil, err
	}
	notifier := &eventlog.Notifier{Log: elog, Next: rt, Event: pipeline.EventAssetProcessed}
	if err := rt.Start(ctx); err != nil {
		return nil, err
	}
	defer rt.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/socket.io/", rt)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	hs.RegisterOnShutdown(rt.Stop)
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	base := &url.URL{Scheme: "http", Host: ln.Addr().String()}

	run := time.Now()
	users := make([]string, o.Users)
	tokens := make([]string, o.Users)
	for i := range users {
		users[i] = fmt.Sprintf("fanout-%x-%d", run.UnixNano(), i)
		if tokens[i], err = keys.Sign(users[i], "", 24*time.Hour); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(w, "klectr bench -fanout: users %d  rate %d events/s  duration %v  publishers %d  GOMAXPROCS %d  load average %s\n",
		o.Users, o.Rate, o.Duration, o.Publishers, runtime.GOMAXPROCS(0), loadavg())

	t := newTracker()
	socks, err := connectAll(ctx, []*url.URL{base}, tokens)
	if err != nil {
		return nil, err
	}
	sctx, stopSockets := context.WithCancel(ctx)
	var readers sync.WaitGroup
	dropped := make([]error, len(socks))
	for i, s := range socks {
		readers.Go(func() {
			defer s.close()
			dropped[i] = s.serve(sctx, func(ev Event, at time.Time) { t.addReceipt(receipt{socket: i, ev: ev, at: at}) })
		})
	}
	defer func() {
		stopSockets()
		readers.Wait()
	}()
	if n := rt.ConnectedSockets(); n != o.Users {
		return nil, fmt.Errorf("%d of %d sockets registered", n, o.Users)
	}

	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}

	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0 := selfCPU()
	heapPeak := sampleHeap(sctx)

	rep := &FanoutReport{Scheduled: int(int64(o.Rate) * int64(o.Duration) / int64(time.Second))}
	type job struct {
		i  int
		at time.Time
	}
	jobs := make(chan job, o.Publishers)
	sends := make([][]time.Duration, o.Publishers)
	dispatch := make([][]time.Duration, o.Publishers)
	var sentMu sync.Mutex
	sentAt := make(map[string]time.Time, rep.Scheduled) // eventId → its Send returned
	var (
		errMu    sync.Mutex
		lastSend atomic.Int64
		pubs     sync.WaitGroup
	)
	prefix := hex.EncodeToString(secret[:4])
	for p := range o.Publishers {
		pubs.Go(func() {
			for j := range jobs {
				u := j.i % o.Users
				id := fmt.Sprintf("%s-%d", prefix, j.i)
				at := j.at
				a := &asset.Asset{
					ID: "a-" + id, UserID: users[u], Status: asset.StatusDraft, ProcessingJobID: "j-" + id,
					EventID: "e-" + id, Attempts: 1, AIMetadata: []byte(`{"label":"test","confidence":0.93}`), ProcessedAt: &at,
				}
				t.addUpload(upload{user: u, start: at, end: at, status: http.StatusAccepted, assetIDs: []string{a.ID}})
				pctx, cancel := context.WithTimeout(ctx, pipeline.PublishTimeout)
				start := time.Now()
				err := notifier.Send(pctx, a.UserID, pipeline.EventAssetProcessed, pipeline.NewEvent(a))
				end := time.Now()
				cancel()
				sends[p] = append(sends[p], end.Sub(start))
				dispatch[p] = append(dispatch[p], start.Sub(at))
				sentMu.Lock()
				sentAt[a.EventID] = end
				sentMu.Unlock()
				lastSend.Store(end.UnixNano())
				if err != nil {
					errMu.Lock()
					if rep.SendErrors++; rep.FirstErr == "" {
						rep.FirstErr = err.Error()
					}
					errMu.Unlock()
				}
			}
		})
	}
	// The schedule: event i at t0 + i/Rate.
	t0 := time.Now().Add(10 * time.Millisecond)
	interval := time.Second / time.Duration(o.Rate)
	for i := 0; i < rep.Scheduled && ctx.Err() == nil; i++ {
		at := t0.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if time.Since(at) > time.Millisecond {
			rep.Late++
		}
		jobs <- job{i, at}
	}
	close(jobs)
	pubs.Wait()
	rep.PublishedIn = time.Unix(0, lastSend.Load()).Sub(t0)
	rep.CPU = selfCPU() - cpu0
	if o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	if n := t.pending(); n > 0 {
		fmt.Fprintf(w, "fanout: published; waiting up to %v for %d events\n", o.Wait, n)
	}
	t.waitAll(o.Wait, ctx.Done())
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	rep.GCs = ms1.NumGC - ms0.NumGC
	for i := ms0.NumGC; i < ms1.NumGC && i < ms0.NumGC+256; i++ {
		rep.GCPauseMax = max(rep.GCPauseMax, time.Duration(ms1.PauseNs[(i+255)%256]))
	}
	stopSockets()
	readers.Wait()
	rep.HeapPeak = heapPeak()

	ups, recs := t.snapshot()
	rep.Report = analyze("fanout", users, ups, recs, true)
	for _, err := range dropped {
		if err != nil {
			rep.Dropped++
		}
	}
	for p := range sends {
		rep.Send = append(rep.Send, sends[p]...)
		rep.Dispatch = append(rep.Dispatch, dispatch[p]...)
	}
	for _, rc := range recs {
		if end, ok := sentAt[rc.ev.EventID]; ok {
			rep.AfterSend = append(rep.AfterSend, rc.at.Sub(end))
		}
	}
	slices.Sort(rep.Send)
	slices.Sort(rep.Dispatch)
	slices.Sort(rep.AfterSend)
	return rep, nil
}

// sampleHeap samples HeapInuse every 100 ms until ctx ends; the returned
// function gives the largest sample (call it after ctx ended).
func sampleHeap(ctx context.Context) func() uint64 {
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 { <-done; return peak.Load() }
}

// Print writes the report in the form test/load/README.md quotes.
func (r *FanoutReport) Print(w io.Writer) {
	fmt.Fprintf(w, "fanout: %d events scheduled, %d published in %.2fs (%s events/s), %d handed to a publisher over 1 ms late, %d failed\n",
		r.Scheduled, len(r.Send), r.PublishedIn.Seconds(), rate(len(r.Send), r.PublishedIn), r.Late, r.SendErrors)
	if len(r.Send) > 0 {
		fmt.Fprintf(w, "  Notifier.Send   p50 %s  p90 %s  p99 %s  max %s  (log append + bus + queue on the sockets)\n",
			ms(percentile(r.Send, 50)), ms(percentile(r.Send, 90)), ms(percentile(r.Send, 99)), ms(percentile(r.Send, 100)))
	}
	pct := func(name string, d []time.Duration, note string) {
		if len(d) > 0 {
			fmt.Fprintf(w, "  %-15s p50 %s  p90 %s  p99 %s  max %s  (%s)\n", name,
				ms(percentile(d, 50)), ms(percentile(d, 90)), ms(percentile(d, 99)), ms(percentile(d, 100)), note)
		}
	}
	pct("to a publisher", r.Dispatch, "scheduled time → Send starts: all publishers busy")
	pct("after Send", r.AfterSend, "Send returned → received: socket queue, write, client read")
	if len(r.Lag) > 0 {
		fmt.Fprintf(w, "  event lag       p50 %s  p90 %s  p99 %s  max %s  (received − processedAt, which has ms precision)\n",
			ms(percentile(r.Lag, 50)), ms(percentile(r.Lag, 90)), ms(percentile(r.Lag, 99)), ms(percentile(r.Lag, 100)))
	}
	if len(r.E2E) > 0 {
		fmt.Fprintf(w, "  exact lag       p50 %s  p90 %s  p99 %s  max %s  (received − scheduled time, ns)\n",
			ms(percentile(r.E2E, 50)), ms(percentile(r.E2E, 90)), ms(percentile(r.E2E, 99)), ms(percentile(r.E2E, 100)))
	}
	fmt.Fprintf(w, "  events %d: missing %d  duplicate %d (repeats %d)  cross-user %d  sockets dropped %d\n",
		r.Received, r.Missing, r.Duplicates, r.Repeats, r.CrossUser, r.Dropped)
	fmt.Fprintf(w, "  process (server and clients): %d GCs, longest pause %s, peak heap in use %.1f MiB, CPU %.2fs while publishing (%.0f ms per 1,000 events)\n",
		r.GCs, ms(r.GCPauseMax), float64(r.HeapPeak)/(1<<20), r.CPU.Seconds(), float64(r.CPU.Milliseconds())*1000/float64(max(len(r.Send), 1)))
}

// selfCPU is this process's user + system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// errFanoutFlags is returned for flags that make no sense with -fanout.
var errFanoutFlags = errors.New("-fanout measures the realtime path in this process: -url, -baseline, -pid, -c, -n and the image flags do not apply")

// mainFanout is `klectr bench -fanout`: checks the flags, runs, prints.
func mainFanout(ctx context.Context, fs *flag.FlagSet, o Options, fo FanoutOptions, stdout, stderr io.Writer, usage func(string, ...any) int) int {
	var wrong bool
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "url", "jwt-secret", "data-dir", "c", "n", "timeout", "image", "image-bytes", "pid", "baseline":
			wrong = true
		}
	})
	fo.Users, fo.Duration, fo.Wait = o.Users, o.Duration, o.Wait
	if fo.Duration == 0 {
		fo.Duration = 10 * time.Second
	}
	switch {
	case wrong:
		return usage("%v", errFanoutFlags)
	case fo.Users < 1 || fo.Users > maxUsers:
		return usage("-users must be from 1 to %d", maxUsers)
	case fo.Rate < 1 || fo.Rate > 100_000:
		return usage("-rate must be from 1 to 100000")
	case fo.Publishers < 1 || fo.Publishers > maxConcurrency:
		return usage("-publishers must be from 1 to %d", maxConcurrency)
	case fo.Duration < 0 || fo.Duration > maxDuration:
		return usage("-duration must be from 0 to %v", maxDuration)
	case fo.Wait < 0 || fo.Wait > time.Hour:
		return usage("-wait must be from 0 to 1h")
	}
	r, err := RunFanout(ctx, fo, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "klectr bench: %v\n", err)
		return 1
	}
	r.Print(stdout)
	if p := r.Problems(); len(p) > 0 {
		fmt.Fprintf(stdout, "FAIL: %s\n", strings.Join(p, "; "))
		return 1
	}
	return 0
}
