package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
	"github.com/klectr/klectr/internal/realtime"
)

// mode is what a server process runs.
type mode string

const (
	modeServe  mode = "serve"  // API, realtime and worker
	modeAPI    mode = "api"    // API and realtime
	modeWorker mode = "worker" // worker only
)

func (m mode) api() bool    { return m != modeWorker }
func (m mode) worker() bool { return m != modeAPI }

// shutdownTimeout bounds each draining step of a graceful stop.
const shutdownTimeout = 25 * time.Second

// runServer runs serve, api or worker until ctx ends. It starts, in order:
// the realtime server, the queue's workers, the sweeps (event relay,
// reconciler, orphan blobs, event log expiry; worker processes only), the
// profiling endpoint (with PPROF_ADDR) and the HTTP listener (the API, or
// on a worker only /healthz, /readyz and /metrics), so that a signal
// during start-up finds every part running and goes through the ordered
// stop. It stops in this order, each step bounded by
// shutdownTimeout:
//  1. the realtime server closes every socket without a Socket.IO
//     disconnect, so clients reconnect by themselves when the service is back;
//  2. the HTTP server stops accepting and lets in-flight requests finish,
//     so an upload that is being received still commits and gets its 202;
//     then the profiling endpoint closes;
//  3. the queue stops taking jobs and lets running ones finish; one still
//     running at the deadline is cancelled and put back, never lost;
//  4. the sweeps stop (a sweep in progress is cancelled);
//  5. the backends close (intake, database or MongoDB, Redis, S3);
//  6. with tracing on, the spans still buffered are exported (at most
//     traceFlushTimeout) and the exporter closes: every span, the last
//     jobs' and the relay's included, has ended by then.
func runServer(ctx context.Context, m mode, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, rest, err := config.Load(string(m), args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageErr("unexpected arguments %q", rest)
	}
	log := newLogger(cfg, stderr)
	tracer, stopTracing, err := newTracer(ctx, cfg, m, log)
	if err != nil {
		return err
	}
	defer stopTracing() // deferred first: runs after the backends close
	if tracer != nil {
		log = slog.New(traceLog{log.Handler()})
	}
	secret, err := jwtSecret(cfg, log)
	if err != nil {
		return err
	}
	keys := auth.NewKeys(secret, nil)
	if cfg.JWTPreviousSecret != "" {
		keys.AcceptPrevious([]byte(cfg.JWTPreviousSecret))
	}
	analyzer, breaker, err := newAnalyzer(cfg, log)
	if err != nil {
		return err
	}
	if !m.worker() {
		breaker = nil // an api process calls no AI: its workers hold the breakers
	}
	handler := &pipeline.Handler{
		Analyzer: analyzer,
		Log:      log.With("component", "pipeline"),
		Now:      time.Now,
		NewID:    newIDs(),
		Tracer:   tracer,
	}
	qo := queueOptions{single: m == modeServe && cfg.Embedded()}
	if m.worker() {
		qo.handler = handler
	}
	b, err := openBackends(ctx, cfg, log, qo)
	if err != nil {
		return err
	}
	defer func() {
		if err := b.Close(); err != nil {
			log.Warn("closing the backends", "err", err)
		}
	}()
	rt, err := realtime.New(realtime.Options{
		Authenticate: func(token string) (string, time.Time, error) {
			c, err := keys.Verify(token)
			return c.UserID, c.ExpiresAt, err
		},
		Bus:          b.bus,
		Logger:       log.With("component", "realtime"),
		Backlog:      b.events,
		BacklogEvent: pipeline.EventAssetProcessed,
	})
	if err != nil {
		return err
	}
	// Every asset_processed, first publish or relay, is in the user's log
	// before any socket may get it; on a worker the realtime server
	// publishes on the bus, so the log is appended once, by the worker. On
	// the embedded shape a job's event is appended with its final state, and
	// the handler publishes it on the realtime server alone (Bus).
	notifier := &eventlog.Notifier{Log: b.events, Next: rt, Event: pipeline.EventAssetProcessed}
	handler.Store, handler.Blobs, handler.Notifier = b.store, b.blobs, notifier
	if b.eventsWithState {
		handler.Bus = rt
	}
	var sweeps []*loop
	if m.worker() {
		sweeps = newSweeps(handler, b, qo.single, time.Now(), cfg.EventRetention, log)
	}
	srv := newHTTPServer(m, cfg, b, keys, rt, breaker, tracer, log)
	handler.Observer = srv.metrics // before the queue starts: no job runs yet

	if err := rt.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	defer rt.Stop()
	serveErr := make(chan error, 1)
	if m.worker() {
		startCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		err := b.queue.Start(startCtx)
		cancel()
		if err != nil {
			serveErr <- err
		} else {
			log.Info("worker started", "concurrency", cfg.WorkerConcurrency, "analyzer", analyzerName(cfg))
		}
	}
	var prof *pprofServer
	if cfg.PprofAddr != "" && len(serveErr) == 0 {
		prof = newPprofServer(cfg.PprofAddr, log.With("component", "pprof"))
		prof.start(serveErr)
	}
	if len(serveErr) == 0 {
		for _, l := range sweeps {
			l.Start()
		}
		srv.start(serveErr)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping", "cause", context.Cause(ctx))
	case runErr = <-serveErr:
		log.Error("start-up or the HTTP server failed; stopping", "err", runErr)
	}
	rt.Stop()
	srv.stop()
	if prof != nil {
		prof.stop()
	}
	if m.worker() {
		qctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if err := b.queue.Stop(qctx); err != nil {
			log.Warn("queue stop", "err", err)
		}
		cancel()
		log.Info("worker stopped")
	}
	for _, l := range sweeps {
		l.Stop()
	}
	log.Info("sweeps stopped")
	log.Info("stopped")
	return runErr
}

// httpServer is the process's listener: the API with Socket.IO, or on a
// worker only the probes.
type httpServer struct {
	srv     *http.Server
	addr    string
	mode    mode
	log     *slog.Logger
	metrics *metrics
	sampler *loop // the queue counts' history (api processes); nil otherwise
}

// Queue count history for the console's chart: a sample every
// historyEvery, for an hour.
const (
	historyEvery = 30 * time.Second
	historyLen   = int(time.Hour / historyEvery)
)

func newHTTPServer(m mode, cfg *config.Config, b *backends, keys *auth.Keys, rt *realtime.Server, breaker *ai.Breaker, tracer trace.Tracer, log *slog.Logger) *httpServer {
	var sockets func() int
	if m.api() {
		sockets = rt.ConnectedSockets
	}
	mx := newMetrics(b.queue.Counts, sockets)
	if breaker != nil {
		mx.reg.MustRegister(ai.BreakerCollector(breaker))
	}
	deps := httpapi.Deps{
		Keys:    keys,
		Assets:  b.store,
		Intake:  b.intake,
		Blobs:   b.blobs,
		Jobs:    b.queue,
		Limits:  httpapi.Limits{MaxFiles: cfg.MaxFiles, MaxFileBytes: cfg.MaxFileBytes, MaxPixels: cfg.MaxPixels},
		Log:     log.With("component", "http"),
		NewID:   newIDs(),
		Ready:   b.ready,
		Metrics: mx.handler(),
		Tracer:  tracer,
	}
	if breaker != nil {
		deps.AIBreaker = breaker.State
	}
	var h http.Handler
	var sampler *loop
	if m.api() {
		deps.Socket = rt
		deps.Events = b.events
		deps.Timelines = b.store
		hist := queue.NewHistory(historyLen)
		deps.QueueHistory = hist.Since
		sampler = newLoop(0, historyEvery, func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if counts, err := b.queue.Counts(ctx); err == nil {
				hist.Add(queue.Sample{At: time.Now(), Counts: counts})
			}
		})
		if cfg.UploadRate > 0 {
			deps.Limiter = httpapi.NewUserLimiter(cfg.UploadRate, max(1, cfg.UploadRate/6), nil)
		}
		h = httpapi.New(deps)
	} else {
		h = httpapi.NewProbes(deps)
	}
	return &httpServer{
		addr:    cfg.Addr,
		mode:    m,
		log:     log,
		metrics: mx,
		sampler: sampler,
		srv: &http.Server{
			Handler:           mx.instrument(h),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}
}

// start listens on ADDR and serves; a failure to listen, or to serve, goes
// to errc.
func (s *httpServer) start(errc chan<- error) {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		errc <- fmt.Errorf("ADDR=%q: %w", s.addr, err)
		return
	}
	s.log.Info("listening", "addr", ln.Addr().String(), "mode", s.mode)
	if s.sampler != nil {
		s.sampler.Start()
	}
	go func() {
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
}

// stop lets in-flight requests finish, then closes what is left.
func (s *httpServer) stop() {
	if s.sampler != nil {
		s.sampler.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.log.Warn("HTTP shutdown deadline passed; closing connections", "err", err)
		s.srv.Close()
	}
	s.log.Info("HTTP server stopped")
}

// jwtSecret is JWT_SECRET, or on the embedded default a secret generated
// once into DATA_DIR.
func jwtSecret(cfg *config.Config, log *slog.Logger) ([]byte, error) {
	if cfg.JWTSecret != "" {
		return []byte(cfg.JWTSecret), nil
	}
	return auth.LoadOrCreateSecret(cfg.DataDir, log)
}

// newAnalyzer is the built-in analyzer, or with AI_SERVICE_URL the
// service's client behind the process's circuit breaker (one per process,
// shared by all its jobs), which it also returns.
func newAnalyzer(cfg *config.Config, log *slog.Logger) (ai.Analyzer, *ai.Breaker, error) {
	log = log.With("component", "ai")
	if cfg.AIServiceURL == "" {
		return ai.NewBuiltin(ai.BuiltinConfig{MaxPixels: cfg.MaxPixels, MaxBytes: cfg.MaxFileBytes, Logger: log}), nil, nil
	}
	c, err := ai.NewClient(ai.ClientConfig{
		BaseURL:  cfg.AIServiceURL,
		Token:    cfg.AIServiceToken,
		Timeout:  cfg.AITimeout,
		MaxConns: cfg.WorkerConcurrency,
		Logger:   log,
	})
	if err != nil {
		return nil, nil, err
	}
	br := ai.NewBreaker(c, ai.BreakerConfig{Logger: log})
	return br, br, nil
}

func analyzerName(cfg *config.Config) string {
	if cfg.AIServiceURL == "" {
		return "builtin"
	}
	return "service"
}

// newIDs returns a generator of ULIDs (time-ordered, 80 random bits; safe
// for concurrent use).
func newIDs() func() string {
	return func() string { return ulid.Make().String() }
}
