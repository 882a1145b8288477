package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/pipeline"
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

// maintainInterval is how often owed events are relayed and dead jobs
// reconciled; relayAge keeps the relay off events a handler is publishing.
const (
	maintainInterval = 10 * time.Second
	relayAge         = 30 * time.Second
	reconnectGrace   = 3 * time.Second
)

// runServer runs serve, api or worker until ctx ends, then stops in this
// order (each step bounded by shutdownTimeout):
//  1. the realtime server closes every socket without a Socket.IO
//     disconnect, so clients reconnect by themselves when the service is back;
//  2. the HTTP server stops accepting and lets in-flight requests finish,
//     so an upload that is being received still commits and gets its 202;
//  3. the queue stops taking jobs and lets running ones finish; one still
//     running at the deadline is cancelled and put back, never lost;
//  4. the maintenance loop (event relay, dead-job reconcile) stops;
//  5. the database closes.
func runServer(ctx context.Context, m mode, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, rest, err := config.Load(string(m), args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageErr("unexpected arguments %q", rest)
	}
	log := newLogger(cfg, stderr)
	secret, err := jwtSecret(cfg, log)
	if err != nil {
		return err
	}
	keys := auth.NewKeys(secret, nil)
	ids := newIDs()

	// Realtime: the worker publishes through it, the API serves it.
	bus := realtime.NewLocalBus()
	rt, err := realtime.New(realtime.Options{
		Authenticate: func(token string) (string, time.Time, error) {
			c, err := keys.Verify(token)
			return c.UserID, c.ExpiresAt, err
		},
		Bus:    bus,
		Logger: log.With("component", "realtime"),
	})
	if err != nil {
		return err
	}

	analyzer, err := newAnalyzer(cfg, log)
	if err != nil {
		return err
	}
	handler := &pipeline.Handler{
		Analyzer: analyzer,
		Notifier: rt,
		Log:      log.With("component", "pipeline"),
		Now:      time.Now,
		NewID:    ids,
	}
	qo := queueOptions{single: m == modeServe}
	if m.worker() {
		qo.handler = handler
	}
	b, err := openBackends(ctx, cfg, log, qo)
	if err != nil {
		return err
	}
	defer b.Close()
	handler.Store, handler.Blobs = b.store, b.blobs

	if err := rt.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	defer rt.Stop()

	// The worker starts before the listener, so that a signal during
	// start-up finds every part running and goes through the ordered stop.
	started := time.Now()
	startCtx, cancelStart := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancelStart()
	var maint sync.WaitGroup
	maintCtx, stopMaint := context.WithCancel(context.WithoutCancel(ctx))
	defer stopMaint()
	if m.worker() {
		if err := b.queue.Start(startCtx); err != nil {
			return err
		}
		maint.Go(func() {
			// Events a crash left owed go out once clients have had time to
			// reconnect (the Socket.IO clients wait about a second).
			select {
			case <-maintCtx.Done():
				return
			case <-time.After(reconnectGrace):
			}
			if qo.single {
				if n, err := handler.Relay(maintCtx, time.Since(started)); err != nil {
					log.Warn("relaying events owed before the last stop", "err", err)
				} else if n > 0 {
					log.Info("relayed events owed before the last stop", "events", n)
				}
			}
			handler.Maintain(maintCtx, b.queue, maintainInterval, relayAge)
		})
		log.Info("worker started", "concurrency", cfg.WorkerConcurrency, "analyzer", analyzerName(cfg))
	}

	var srv *http.Server
	serveErr := make(chan error, 1)
	if m.api() {
		mx := newMetrics(b.queue.Counts, rt.ConnectedSockets)
		var limiter httpapi.Limiter
		if cfg.UploadRate > 0 {
			limiter = httpapi.NewUserLimiter(cfg.UploadRate, max(1, cfg.UploadRate/6), nil)
		}
		api := httpapi.New(httpapi.Deps{
			Keys:    keys,
			Assets:  b.store,
			Intake:  b.intake,
			Blobs:   b.blobs,
			Jobs:    b.queue,
			Limits:  httpapi.Limits{MaxFiles: cfg.MaxFiles, MaxFileBytes: cfg.MaxFileBytes, MaxPixels: cfg.MaxPixels},
			Log:     log.With("component", "http"),
			NewID:   ids,
			Ready:   b.checks(cfg),
			Socket:  rt,
			Metrics: mx.handler(),
			Limiter: limiter,
		})
		srv = &http.Server{
			Handler:           mx.instrument(api),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		if ln, err := net.Listen("tcp", cfg.Addr); err != nil {
			// Through the ordered stop: the worker is already running.
			srv = nil
			serveErr <- fmt.Errorf("ADDR=%q: %w", cfg.Addr, err)
		} else {
			log.Info("listening", "addr", ln.Addr().String(), "mode", string(m), "analyzer", analyzerName(cfg))
			go func() { serveErr <- srv.Serve(ln) }()
		}
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping", "cause", context.Cause(ctx))
	case runErr = <-serveErr:
		log.Error("HTTP server failed; stopping", "err", runErr)
	}

	rt.Stop()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("HTTP shutdown deadline passed; closing connections", "err", err)
			srv.Close()
		}
		cancel()
		log.Info("HTTP server stopped")
	}
	if m.worker() {
		qctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if err := b.queue.Stop(qctx); err != nil {
			log.Warn("queue stop", "err", err)
		}
		cancel()
		log.Info("worker stopped")
	}
	stopMaint()
	maint.Wait()
	log.Info("stopped")
	if errors.Is(runErr, http.ErrServerClosed) {
		runErr = nil
	}
	return runErr
}

// jwtSecret is JWT_SECRET, or on the embedded default a secret generated
// once into DATA_DIR.
func jwtSecret(cfg *config.Config, log *slog.Logger) ([]byte, error) {
	if cfg.JWTSecret != "" {
		return []byte(cfg.JWTSecret), nil
	}
	return auth.LoadOrCreateSecret(cfg.DataDir, log)
}

func newAnalyzer(cfg *config.Config, log *slog.Logger) (ai.Analyzer, error) {
	if cfg.AIServiceURL == "" {
		return ai.NewBuiltin(ai.BuiltinConfig{MaxPixels: cfg.MaxPixels, MaxBytes: cfg.MaxFileBytes, Logger: log.With("component", "ai")}), nil
	}
	return ai.NewClient(ai.ClientConfig{
		BaseURL: cfg.AIServiceURL,
		Token:   cfg.AIServiceToken,
		Timeout: cfg.AITimeout,
		Logger:  log.With("component", "ai"),
	})
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
