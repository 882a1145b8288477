package realtime

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ErrUnauthorized is what Options.Authenticate returns for a missing, bad or
// expired token; any other error is treated the same way at the handshake.
var ErrUnauthorized = errors.New("realtime: unauthorized")

// ErrStopped is returned by Start after Stop.
var ErrStopped = errors.New("realtime: server stopped")

// Defaults for the zero values of Options.
const (
	DefaultMaxConnsPerUser = 100
	DefaultMaxPayload      = 64 << 10
	DefaultSendQueue       = 1024
	DefaultWriteTimeout    = 10 * time.Second
	DefaultPingInterval    = 25 * time.Second
	DefaultPingTimeout     = 20 * time.Second
	DefaultConnectTimeout  = 5 * time.Second
	DefaultMaxPending      = 2048
	DefaultMaxPendingPerIP = 32
)

// upgradeTimeout bounds the polling→websocket probe (2probe/3probe/5).
const upgradeTimeout = 10 * time.Second

// probeGrace is how long a closing session waits for the "5" of an upgrade
// whose "3probe" has gone out.
const probeGrace = time.Second

// reservedEvents are names the Socket.IO clients use for their own events;
// an emitted event with one of them would be confused with the client's.
var reservedEvents = map[string]bool{
	"connect": true, "connect_error": true, "disconnect": true, "disconnecting": true,
	"newListener": true, "removeListener": true,
}

// Options configures a Server. Authenticate and Bus are required; every
// zero limit takes the Default constant of the same name.
type Options struct {
	// Authenticate verifies a token (the CONNECT auth {"token"} or the
	// handshake's "Authorization: Bearer" header) and returns the user it
	// belongs to and when it expires. A token without an expiry (zero
	// expiresAt) is refused like an expired one. It must not log the token.
	Authenticate func(token string) (userID string, expiresAt time.Time, err error)
	// Bus carries Send's events to the sockets of every process.
	Bus Bus
	// Logger receives connection lines with "conn" (a hash of the session
	// id, which is never logged) and "userId"; nil discards.
	Logger *slog.Logger
	// AllowedOrigins lists browser origins ("https://app.example.com") that
	// may connect from another origin; "*" allows any. Requests without an
	// Origin header (native clients) and same-origin requests are always
	// allowed.
	AllowedOrigins []string

	// MaxConnsPerUser bounds one user's connected sockets; the next CONNECT
	// gets CONNECT_ERROR "too many connections". Negative means no limit.
	// The default leaves room for many devices and browser tabs, and for
	// sockets whose network vanished (they count until their ping times
	// out), while one token cannot hold thousands of connections.
	MaxConnsPerUser int
	// MaxPayload bounds one incoming websocket message or polling POST body
	// (bytes); it is announced to the client in the handshake.
	MaxPayload int64
	// SendQueue bounds the packets waiting to be written to one socket. A
	// socket whose queue is full when an event arrives is disconnected: a
	// client that stops reading never grows the server's memory. The
	// default absorbs a burst of a user's whole backlog (the pipeline's
	// relay after a crash) for a client that reads at network speed; a
	// client that does not read hits WriteTimeout or this bound, whichever
	// comes first.
	SendQueue int
	// WriteTimeout bounds writing one packet (websocket) or one response
	// (polling) and the flush of final packets at close.
	WriteTimeout time.Duration
	// PingInterval and PingTimeout are the Engine.IO heartbeat: the server
	// pings every PingInterval and closes a connection whose pong has not
	// come PingTimeout after the ping.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// ConnectTimeout closes an Engine.IO connection that has not completed a
	// Socket.IO CONNECT this long after it opened (or after it left). The
	// official clients send CONNECT as soon as the connection opens.
	ConnectTimeout time.Duration
	// MaxPending and MaxPendingPerIP bound the Engine.IO connections that
	// have not yet authenticated a Socket.IO CONNECT, over the process and
	// per client address (an IPv6 address counts by its /64). A handshake
	// over either limit is refused with 503 (process) or 429 (address) and
	// Retry-After, which the official clients retry with backoff. Behind a
	// reverse proxy every client has the proxy's address: raise
	// MaxPendingPerIP there, or make it negative (no limit).
	MaxPending      int
	MaxPendingPerIP int

	// Backlog, when set, turns on connection state recovery, durable: the
	// CONNECT reply carries a pid, every event named BacklogEvent carries
	// its data's "eventId" as the Socket.IO offset (a last argument), and a
	// CONNECT with {pid, offset} (the official clients send them when they
	// reconnect) or {lastEventId} (an app after a relaunch) first gets, in
	// order and once, the user's events after that one from the Backlog,
	// then what happened meanwhile. The client reports recovered when the
	// position was found; an unknown or expired one replays nothing. Only
	// the authenticated user's events are ever read. Nil: no recovery, no
	// pid, no offsets.
	Backlog Backlog
	// BacklogEvent is the name of the events Backlog holds, e.g.
	// "asset_processed"; required with Backlog.
	BacklogEvent string
}

func (o Options) withDefaults() (Options, error) {
	if o.Authenticate == nil {
		return o, errors.New("realtime: Options.Authenticate is required")
	}
	if o.Bus == nil {
		return o, errors.New("realtime: Options.Bus is required")
	}
	if o.Backlog != nil && (o.BacklogEvent == "" || reservedEvents[o.BacklogEvent]) {
		return o, errors.New("realtime: Options.BacklogEvent must name the Backlog's events")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	for _, origin := range o.AllowedOrigins {
		if origin == "*" {
			continue
		}
		if u, err := url.Parse(origin); err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return o, fmt.Errorf("realtime: Options.AllowedOrigins: %q is not an origin like https://app.example.com", origin)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.WriteTimeout, DefaultWriteTimeout)
	def(&o.PingInterval, DefaultPingInterval)
	def(&o.PingTimeout, DefaultPingTimeout)
	def(&o.ConnectTimeout, DefaultConnectTimeout)
	if o.MaxConnsPerUser == 0 {
		o.MaxConnsPerUser = DefaultMaxConnsPerUser
	}
	if o.MaxPending == 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.MaxPendingPerIP == 0 {
		o.MaxPendingPerIP = DefaultMaxPendingPerIP
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.SendQueue <= 0 {
		o.SendQueue = DefaultSendQueue
	}
	return o, nil
}

// Server is the Socket.IO endpoint. Mount it at "/socket.io/" on the API's
// listener, Start it, and Stop it when the listener shuts down.
type Server struct {
	opts Options
	log  *slog.Logger
	reg  *registry
	// now is the clock for token expiry; tests replace it.
	now func() time.Time

	mu       sync.Mutex
	started  bool
	stopped  bool
	sessions map[string]*session
	// pending counts the sessions that have not authenticated yet, in all
	// and by client address (see Options.MaxPending).
	pending      int
	pendingByKey map[string]int
	unsub        func()
	stopOnce     sync.Once
}

// New returns a Server that serves nothing until Start.
func New(opts Options) (*Server, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Server{
		opts:         o,
		log:          o.Logger,
		reg:          newRegistry(),
		now:          time.Now,
		sessions:     make(map[string]*session),
		pendingByKey: make(map[string]int),
	}, nil
}

// Start subscribes to the bus; from then on the server accepts connections
// and delivers events. Cancelling ctx stops the server as Stop does.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopped:
		return ErrStopped
	case s.started:
		return errors.New("realtime: server already started")
	}
	unsub, err := s.opts.Bus.Subscribe(ctx, s.deliver, s.busGap)
	if err != nil {
		return fmt.Errorf("realtime: subscribe to the bus: %w", err)
	}
	s.unsub = unsub
	s.started = true
	context.AfterFunc(ctx, s.Stop)
	return nil
}

// Stop shuts the server down; it is idempotent and safe to call from any
// goroutine, also before Start. The order:
//  1. new handshakes are refused with 503 (clients retry with backoff);
//  2. the bus subscription ends, so no event is taken that could not be
//     delivered in full;
//  3. every connection is closed at the Engine.IO level (websocket close
//     frame "going away", or a close packet to the pending poll) without a
//     Socket.IO DISCONNECT, so the official clients reconnect by themselves —
//     to another process, or to this one when it is back;
//  4. Stop returns when every connection has finished, at the latest
//     WriteTimeout after step 3.
//
// Call it when the HTTP server begins its shutdown, for example with
// http.Server.RegisterOnShutdown(rt.Stop): Shutdown does not wait for
// hijacked websocket connections and would otherwise wait for long polls.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.stopped = true
		unsub := s.unsub
		sessions := make([]*session, 0, len(s.sessions))
		for _, sess := range s.sessions {
			sessions = append(sessions, sess)
		}
		s.mu.Unlock()
		if unsub != nil {
			unsub()
		}
		for _, sess := range sessions {
			sess.close(reasonStopping, true)
		}
		for _, sess := range sessions {
			<-sess.done
		}
		s.log.Info("realtime server stopped", "connections", len(sessions))
	})
}

// Send publishes event with data (marshalled to JSON) for every socket of
// userID in every process; it returns once the bus has taken it, which is
// not a promise that any socket is connected or receives it.
func (s *Server) Send(ctx context.Context, userID, event string, data any) error {
	if reservedEvents[event] {
		return fmt.Errorf("%w: event name %q is reserved by the Socket.IO clients", ErrInvalidMessage, event)
	}
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("realtime: encode %s for user %s: %w", event, userID, err)
	}
	if err := s.opts.Bus.Publish(ctx, Message{UserID: userID, Event: event, Data: b}); err != nil {
		return fmt.Errorf("realtime: publish %s: %w", event, err)
	}
	return nil
}

// deliver is the bus subscriber: it queues the event on every socket of the
// user in this process, without blocking.
func (s *Server) deliver(m Message) {
	if err := m.Validate(); err != nil {
		s.log.Warn("dropped invalid bus message", "userId", m.UserID, "event", m.Event, "err", err)
		return
	}
	socks := s.reg.sockets(m.UserID)
	if len(socks) == 0 {
		return
	}
	id := s.opts.offsetOf(m)
	pkt, err := encodeEvent(m.Event, m.Data, id)
	if err != nil {
		s.log.Warn("dropped unencodable bus message", "userId", m.UserID, "event", m.Event, "err", err)
		return
	}
	for _, sock := range socks {
		sock.emit(m.UserID, pkt, id)
	}
}

const reasonBusGap = "bus gap"

// busGap is the bus subscription's onGap: events published while it was
// away may be missing from every socket of this process, and those sockets
// stay connected, so nothing else would ever make up for them. Every
// connection is closed as Stop closes them, without a Socket.IO DISCONNECT:
// the official clients reconnect by themselves, with their pid and offset
// when a Backlog is set, and get what they missed from it; without one they
// at least see a new connection that is not recovered, their cue to refetch.
// The sockets leave the registry before busGap returns, so no event
// delivered after the gap can move a client's offset past a missed one.
func (s *Server) busGap() {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	s.log.Warn("realtime bus lost events meanwhile; closing every connection so that clients catch up", "connections", len(sessions))
	for _, sess := range sessions {
		sess.close(reasonBusGap, true)
	}
}

// ConnectedSockets returns the number of Socket.IO sockets connected to this
// process (authenticated and registered for delivery).
func (s *Server) ConnectedSockets() int { return s.reg.count() }

// ServeHTTP serves the Engine.IO endpoint: polling GET/POST and websocket,
// selected by the "transport" query parameter.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if !s.originAllowed(origin, r.Host) {
		httpError(w, http.StatusForbidden, 4, "Origin not allowed")
		return
	}
	if origin != "" {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
	}
	if r.Method == http.MethodOptions {
		h := w.Header()
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
			h.Set("Access-Control-Allow-Headers", req)
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	q := r.URL.Query()
	if q.Get("EIO") != "4" {
		httpError(w, http.StatusBadRequest, 5, "Unsupported protocol version")
		return
	}
	sid := q.Get("sid")
	switch q.Get("transport") {
	case "polling":
		if sid == "" {
			if r.Method != http.MethodGet {
				httpError(w, http.StatusBadRequest, 2, "Bad handshake method")
				return
			}
			s.handshakePolling(w, r)
			return
		}
		sess := s.lookup(sid)
		if sess == nil {
			httpError(w, http.StatusBadRequest, 1, "Session ID unknown")
			return
		}
		if !sess.admits(bearer(r)) {
			httpError(w, http.StatusForbidden, 4, "Forbidden")
			return
		}
		switch r.Method {
		case http.MethodGet:
			sess.servePoll(w, r)
		case http.MethodPost:
			sess.servePost(w, r)
		default:
			httpError(w, http.StatusBadRequest, 3, "Bad request")
		}
	case "websocket":
		// Hijacked connections keep the deadlines an http.Server's
		// ReadTimeout/WriteTimeout set; ours are per packet instead.
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Time{})
		_ = rc.SetWriteDeadline(time.Time{})
		if sid == "" {
			s.serveWebSocket(w, r)
			return
		}
		sess := s.lookup(sid)
		if sess == nil {
			httpError(w, http.StatusBadRequest, 1, "Session ID unknown")
			return
		}
		if !sess.admits(bearer(r)) {
			httpError(w, http.StatusForbidden, 4, "Forbidden")
			return
		}
		sess.serveUpgrade(w, r)
	default:
		httpError(w, http.StatusBadRequest, 0, "Transport unknown")
	}
}

func (s *Server) originAllowed(origin, host string) bool {
	if origin == "" {
		return true
	}
	for _, a := range s.opts.AllowedOrigins {
		if a == "*" || strings.EqualFold(strings.TrimSuffix(a, "/"), origin) {
			return true
		}
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, host)
}

// httpError writes an Engine.IO error body, as the reference server does.
func httpError(w http.ResponseWriter, status, code int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{code, message})
}

func (s *Server) lookup(sid string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[sid]
}

func (s *Server) forget(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[sess.id] == sess {
		delete(s.sessions, sess.id)
	}
	s.authenticatedLocked(sess)
}

// Reasons register refuses a handshake.
var (
	errNotServing    = errors.New("realtime: server is not serving")
	errTooManyAll    = errors.New("realtime: too many unauthenticated connections")
	errTooManyClient = errors.New("realtime: too many unauthenticated connections from this address")
)

// register adds a new session under a fresh id, unless the server is not
// serving or the unauthenticated sessions are at a limit; the check and the
// insert share the lock Stop takes, so Stop never misses a session.
func (s *Server) register(sess *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch o := s.opts; {
	case !s.started || s.stopped:
		return errNotServing
	case o.MaxPending > 0 && s.pending >= o.MaxPending:
		return errTooManyAll
	case o.MaxPendingPerIP > 0 && s.pendingByKey[sess.clientKey] >= o.MaxPendingPerIP:
		return errTooManyClient
	}
	s.sessions[sess.id] = sess
	s.pending++
	s.pendingByKey[sess.clientKey]++
	sess.pending = true
	return nil
}

// authenticated takes sess out of the unauthenticated count, once: at its
// first accepted CONNECT, or when it ends.
func (s *Server) authenticated(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authenticatedLocked(sess)
}

func (s *Server) authenticatedLocked(sess *session) {
	if !sess.pending {
		return
	}
	sess.pending = false
	s.pending--
	if s.pendingByKey[sess.clientKey]--; s.pendingByKey[sess.clientKey] <= 0 {
		delete(s.pendingByKey, sess.clientKey)
	}
}

// refuseHandshake answers a handshake that register refused.
func refuseHandshake(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errTooManyClient):
		w.Header().Set("Retry-After", "5")
		httpError(w, http.StatusTooManyRequests, 3, "Too many unauthenticated connections from this address")
	case errors.Is(err, errTooManyAll):
		w.Header().Set("Retry-After", "5")
		httpError(w, http.StatusServiceUnavailable, 3, "Too many unauthenticated connections")
	default:
		httpError(w, http.StatusServiceUnavailable, 3, "Server is not accepting connections")
	}
}

// clientKey is what MaxPendingPerIP counts by: the client's IP address, an
// IPv6 address by its /64 (one subscriber's usual allocation).
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

func (s *Server) handshake(transport string) handshake {
	return handshake{
		Upgrades:     upgradesFrom(transport),
		PingInterval: s.opts.PingInterval.Milliseconds(),
		PingTimeout:  s.opts.PingTimeout.Milliseconds(),
		MaxPayload:   s.opts.MaxPayload,
	}
}

func upgradesFrom(transport string) []string {
	if transport == transportPolling {
		return []string{transportWebSocket}
	}
	return []string{}
}

// bearer returns the token of an "Authorization: Bearer" header, or "".
func bearer(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// newID returns a random URL-safe id of 128 bits; Engine.IO and Socket.IO
// ids are unguessable because a session id is the credential of a polling
// request (with the Authorization header, when the client sends one).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// logID is what log lines carry for a session id: a short hash that
// correlates the lines of one connection but cannot be used to poll it. A
// session id itself is never logged.
func logID(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:6])
}
