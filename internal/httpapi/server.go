// Package httpapi is the service's HTTP API: one route table, the upload
// intake, the asset and admin endpoints, and replies in the contract's shape
// (api/openapi.yaml). Domain errors become HTTP statuses here and nowhere else.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel/trace"

	"github.com/klectr/klectr/internal/ai"
	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/console"
	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/queue"
)

// Assets is what the API reads of the asset store.
type Assets interface {
	Get(ctx context.Context, id string) (*asset.Asset, error)
	List(ctx context.Context, userID string, q asset.ListQuery) (asset.Page, error)
}

// Intake makes accepted work durable. It builds each asset's job itself.
type Intake interface {
	// Submit stores the assets, each processing under its ProcessingJobID,
	// and enqueues their jobs: when it returns nil, both are durable; on
	// error, nothing was accepted.
	Submit(ctx context.Context, assets []*asset.Asset) error
	// SubmitOnce is Submit under an idempotency key; see
	// idempotency.Submitter.
	idempotency.Submitter
	// Resubmit moves a failed asset back to processing under newJobID and
	// enqueues that job (asset.ErrConflict if it is not failed). When it
	// returns the asset, the asset is processing and its job will run: with
	// the job in the same transaction, or, where the store and the queue
	// share none, enqueued later by the reconciler if the enqueue failed.
	Resubmit(ctx context.Context, assetID, newJobID string) (*asset.Asset, error)
	// Replay runs a dead job again, moving its asset back to processing
	// (queue.ErrNotFound, queue.ErrNotDead).
	Replay(ctx context.Context, jobID string) error
	// DeleteJob deletes a job that is not running (queue.ErrNotFound,
	// queue.ErrActive) and fails its asset if the asset is still processing
	// under it, so that no asset is left processing without a job.
	DeleteJob(ctx context.Context, jobID string) error
}

// Jobs is what the admin API reads and changes of the queue.
type Jobs interface {
	Counts(ctx context.Context) (map[queue.State]int, error)
	List(ctx context.Context, state queue.State, limit int) ([]queue.Info, error)
	Get(ctx context.Context, id string) (queue.Info, error)
}

// Limits bound an upload request.
type Limits struct {
	MaxFiles     int
	MaxFileBytes int64
	MaxPixels    int64
	// MinBodyRate is the progress deadline of a request body: at least
	// MinBodyBytes must arrive in every BodyWindow, or the request is cut
	// off with 408. It stops a client that trickles bytes to hold a
	// connection, without cutting off a phone on a slow network. Every
	// other request body must arrive within one BodyWindow.
	MinBodyBytes int64
	BodyWindow   time.Duration
}

// Deps is everything the API needs; the app wires concrete backends in.
type Deps struct {
	Keys    *auth.Keys
	Assets  Assets
	Intake  Intake
	Blobs   blob.Store
	Jobs    Jobs
	Limits  Limits
	Log     *slog.Logger
	Now     func() time.Time
	NewID   func() string // nil: ULIDs
	Ready   []Check       // what /readyz checks; none: always ready
	Socket  http.Handler  // mounted at /socket.io/ when set
	Metrics http.Handler  // mounted at /metrics when set
	Limiter Limiter       // nil: no per-user rate limit
	// AIBreaker reads the AI service's circuit breaker of this process, for
	// /readyz and the admin queue counts; nil where the process holds none
	// (the built-in analyzer, or an api process: workers call the AI).
	AIBreaker func() ai.BreakerState
	// Events is the users' event log, for GET /api/events; nil: no route.
	Events eventlog.Reader
	// Timelines reads the assets' pipeline timestamps for GET
	// /api/admin/slo; nil: no route.
	Timelines Timelines
	// QueueHistory returns this process's samples of the queue counts
	// taken at or after since, oldest first, for GET
	// /api/admin/queues?history=; nil: none kept.
	QueueHistory func(since time.Time) []queue.Sample
	// Tracer starts a span for each request that enqueues a job (uploads
	// and retries) and for its intake commit; nil: no spans, at no cost.
	Tracer trace.Tracer
}

// Timelines is what the SLO report reads of the asset store
// (asset.Store.Timelines).
type Timelines interface {
	Timelines(ctx context.Context, since time.Time, limit int) ([]asset.Timeline, error)
}

// Check is one dependency that /readyz reports by name (store, queue, bus,
// blobs). Check returns nil when the dependency can do its work now; for a
// store that means accepting writes, not only answering reads.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// Limiter decides whether a user may upload now; when not, it says how long
// to wait.
type Limiter interface {
	Allow(userID string) (ok bool, retryAfter time.Duration)
}

// Server serves the API.
type Server struct {
	Deps
	log *slog.Logger
	mux *http.ServeMux

	readyMu sync.Mutex
	failing map[string]bool // checks that failed last time, to log changes only
}

// New returns the API's handler with every route registered.
func New(d Deps) *Server {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.NewID == nil {
		d.NewID = func() string { return ulid.Make().String() }
	}
	if d.Limits.BodyWindow == 0 {
		d.Limits.BodyWindow = 20 * time.Second
	}
	if d.Limits.MinBodyBytes == 0 {
		d.Limits.MinBodyBytes = 16 << 10
	}
	s := &Server{Deps: d, log: d.Log, mux: http.NewServeMux(), failing: map[string]bool{}}
	s.routes()
	return s
}

// NewProbes returns a handler of the probes only (/healthz, /readyz and
// /metrics when set), for a process that serves no API (klectr worker).
func NewProbes(d Deps) *Server {
	s := &Server{Deps: d, log: d.Log, mux: http.NewServeMux(), failing: map[string]bool{}}
	s.probes()
	return s
}

func (s *Server) routes() {
	user := func(h http.HandlerFunc) http.Handler { return s.Keys.Middleware(s.unauthorized, h) }
	admin := func(h http.HandlerFunc) http.Handler { return user(s.requireAdmin(h)) }

	s.mux.Handle("POST /api/assets/analyze-queue", s.traced("POST /api/assets/analyze-queue", user(s.analyzeQueue)))
	s.mux.Handle("GET /api/assets", user(s.listAssets))
	s.mux.Handle("GET /api/assets/{id}", user(s.getAsset))
	s.mux.Handle("POST /api/assets/{id}/retry", s.traced("POST /api/assets/{id}/retry", user(s.retryAsset)))
	if s.Events != nil {
		s.mux.Handle("GET /api/events", user(s.listEvents))
	}

	s.mux.Handle("GET /api/admin/queues", admin(s.adminQueues))
	s.mux.Handle("GET /api/admin/jobs", admin(s.adminListJobs))
	s.mux.Handle("GET /api/admin/jobs/{id}", admin(s.adminGetJob))
	s.mux.Handle("POST /api/admin/jobs/{id}/retry", admin(s.adminRetryJob))
	s.mux.Handle("DELETE /api/admin/jobs/{id}", admin(s.adminDeleteJob))
	if s.Timelines != nil {
		s.mux.Handle("GET /api/admin/slo", admin(s.adminSLO))
	}

	if s.Socket != nil {
		s.mux.Handle("/socket.io/", s.Socket)
	}
	s.probes()
}

// probes registers /healthz, /readyz, /metrics and the JSON 404 of every
// other path.
func (s *Server) probes() {
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /console/", console.Handler())
	if s.Metrics != nil {
		s.mux.Handle("GET /metrics", s.Metrics)
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, errorf(codeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.boundBody(w, r) }

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="klectr"`)
	s.writeError(w, r, errorf(codeUnauthorized, "a valid bearer token is required"))
}

func (s *Server) requireAdmin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c, _ := auth.FromContext(r.Context()); !c.IsAdmin() {
			s.writeError(w, r, errorf(codeForbidden, "this endpoint needs a token with role admin"))
			return
		}
		h(w, r)
	}
}

// readyTimeout bounds each readiness check.
const readyTimeout = 2 * time.Second

// readyz is GET /readyz: every check runs at once, each bounded, and the
// reply names each dependency's state. Causes are logged, never sent: the
// probe is unauthenticated. The AI breaker's state ("ai") is reported but
// never makes the process unready: while it is open, uploads are still
// accepted and their jobs wait for the service.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	errs := make([]error, len(s.Ready))
	var wg sync.WaitGroup
	for i, c := range s.Ready {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			errs[i] = c.Check(ctx)
		})
	}
	wg.Wait()

	checks := make(map[string]string, len(s.Ready))
	var down []string
	s.readyMu.Lock()
	for i, c := range s.Ready {
		checks[c.Name] = "ok"
		if errs[i] != nil {
			checks[c.Name] = "unavailable"
			down = append(down, c.Name)
			if !s.failing[c.Name] {
				s.log.WarnContext(r.Context(), "not ready", "dependency", c.Name, "err", errs[i])
			}
		} else if s.failing[c.Name] {
			s.log.InfoContext(r.Context(), "ready again", "dependency", c.Name)
		}
		s.failing[c.Name] = errs[i] != nil
	}
	s.readyMu.Unlock()
	body := map[string]any{"checks": checks}
	if s.AIBreaker != nil {
		body["ai"] = s.AIBreaker()
	}
	if len(down) > 0 {
		body["error"] = map[string]string{"code": string(codeUnavailable), "message": "not ready: " + strings.Join(down, ", ")}
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	body["status"] = "ready"
	writeJSON(w, http.StatusOK, body)
}

// claims returns the authenticated caller; routes that call it are behind
// the auth middleware.
func claims(r *http.Request) auth.Claims {
	c, _ := auth.FromContext(r.Context())
	return c
}
