// Package httpapi is the service's HTTP API: one route table, the upload
// intake, the asset and admin endpoints, and replies in the contract's shape
// (api/openapi.yaml). Domain errors become HTTP statuses here and nowhere else.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/queue"
)

// Assets is what the API reads of the asset store.
type Assets interface {
	Get(ctx context.Context, id string) (*asset.Asset, error)
	List(ctx context.Context, userID string, q asset.ListQuery) (asset.Page, error)
}

// Intake makes accepted work durable.
type Intake interface {
	// Submit stores the assets and enqueues their jobs together: when it
	// returns nil, both are durable; on error, neither is visible.
	Submit(ctx context.Context, assets []*asset.Asset, jobs []queue.Job) error
	// Resubmit moves a failed asset back to processing under newJobID and
	// enqueues that job together (asset.ErrConflict if it is not failed).
	Resubmit(ctx context.Context, assetID, newJobID string) (*asset.Asset, error)
	// Replay runs a dead job again, moving its asset back to processing
	// (queue.ErrNotFound, queue.ErrNotDead).
	Replay(ctx context.Context, jobID string) error
}

// Jobs is what the admin API reads and changes of the queue.
type Jobs interface {
	Counts(ctx context.Context) (map[queue.State]int, error)
	List(ctx context.Context, state queue.State, limit int) ([]queue.Info, error)
	Get(ctx context.Context, id string) (queue.Info, error)
	Delete(ctx context.Context, id string) error
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
	NewID   func() string                   // nil: ULIDs
	Ready   func(ctx context.Context) error // nil: always ready
	Socket  http.Handler                    // mounted at /socket.io/ when set
	Metrics http.Handler                    // mounted at /metrics when set
	Limiter Limiter                         // nil: no per-user rate limit
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
	s := &Server{Deps: d, log: d.Log, mux: http.NewServeMux()}
	s.routes()
	return s
}

func (s *Server) routes() {
	user := func(h http.HandlerFunc) http.Handler { return s.Keys.Middleware(s.unauthorized, h) }
	admin := func(h http.HandlerFunc) http.Handler { return user(s.requireAdmin(h)) }

	s.mux.Handle("POST /api/assets/analyze-queue", user(s.analyzeQueue))
	s.mux.Handle("GET /api/assets", user(s.listAssets))
	s.mux.Handle("GET /api/assets/{id}", user(s.getAsset))
	s.mux.Handle("POST /api/assets/{id}/retry", user(s.retryAsset))

	s.mux.Handle("GET /api/admin/queues", admin(s.adminQueues))
	s.mux.Handle("GET /api/admin/jobs", admin(s.adminListJobs))
	s.mux.Handle("GET /api/admin/jobs/{id}", admin(s.adminGetJob))
	s.mux.Handle("POST /api/admin/jobs/{id}/retry", admin(s.adminRetryJob))
	s.mux.Handle("DELETE /api/admin/jobs/{id}", admin(s.adminDeleteJob))

	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if s.Metrics != nil {
		s.mux.Handle("GET /metrics", s.Metrics)
	}
	if s.Socket != nil {
		s.mux.Handle("/socket.io/", s.Socket)
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

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.Ready(ctx); err != nil {
			s.writeError(w, r, internalError(codeUnavailable, err))
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// claims returns the authenticated caller; routes that call it are behind
// the auth middleware.
func claims(r *http.Request) auth.Claims {
	c, _ := auth.FromContext(r.Context())
	return c
}
