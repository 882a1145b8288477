package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

const (
	transportPolling   = "polling"
	transportWebSocket = "websocket"
)

// Reasons a session closes, as logged.
const (
	reasonStopping     = "server stopping"
	reasonExpired      = "token expired"
	reasonPingTimeout  = "ping timeout"
	reasonQueueFull    = "send queue full"
	reasonConnTimeout  = "connect timeout"
	reasonClientClose  = "client close"
	reasonTransport    = "transport closed"
	reasonWriteFailed  = "write failed"
	reasonParseError   = "parse error"
	reasonPayloadLarge = "payload too large"
	reasonPollOverlap  = "overlapping poll"
)

type sessionState int

const (
	stateOpen    sessionState = iota
	stateClosing              // final packets are being flushed
	stateClosed
)

// session is one Engine.IO connection and the Socket.IO socket of the
// default namespace on it (the only namespace, so they share a lifetime
// except that a socket may leave and CONNECT again).
type session struct {
	srv    *Server
	id     string // Engine.IO sid
	sockID string // Socket.IO sid, sent in the CONNECT reply
	log    *slog.Logger
	// headerToken is the handshake's bearer token, used when CONNECT has
	// none. Never logged.
	headerToken string
	// clientKey is the client's address as MaxPendingPerIP counts it;
	// pending tells whether the session is counted (both under srv.mu).
	clientKey string
	pending   bool
	// headerUser is the user of headerToken when it was valid at the
	// handshake: every later request of the session must then carry a
	// valid Authorization header of that user (see admits).
	headerUser string

	// in serialises the handling of incoming packets, which may arrive on a
	// polling POST and on the websocket being upgraded at the same time.
	in sync.Mutex

	mu        sync.Mutex
	state     sessionState
	transport string
	ws        *websocket.Conn
	queue     []string
	// changed is closed and replaced whenever queue, state or transport
	// change; a poll or the websocket writer waits on it.
	changed   chan struct{}
	polling   bool // a GET is being served
	probing   bool // a websocket upgrade is in progress
	upgrading bool // the probe succeeded: polls return at once
	closeCode websocket.StatusCode

	connected bool
	userID    string
	// catching is the socket's replay in progress (Options.Backlog); while
	// it is set, live events wait in it. replayed holds the ids of the
	// replay's last page, so a late live copy of one is dropped.
	catching  *catchup
	replayed  map[string]struct{}
	expiresAt time.Time
	connTimer *time.Timer
	expTimer  *time.Timer
	endTimer  *time.Timer

	pong       chan struct{}
	closing    chan struct{} // closed when state leaves stateOpen
	done       chan struct{} // closed when state is stateClosed
	finishOnce sync.Once
}

func (s *Server) newSession(r *http.Request, transport string) (*session, error) {
	headerToken := bearer(r)
	sess := &session{
		srv:         s,
		id:          newID(),
		sockID:      newID(),
		clientKey:   clientKey(r),
		headerToken: headerToken,
		headerUser:  s.userOf(headerToken),
		transport:   transport,
		changed:     make(chan struct{}),
		pong:        make(chan struct{}, 1),
		closing:     make(chan struct{}),
		done:        make(chan struct{}),
		closeCode:   websocket.StatusNormalClosure,
	}
	sess.log = s.log.With("conn", logID(sess.id))
	if err := s.register(sess); err != nil {
		return nil, err
	}
	sess.mu.Lock()
	sess.connTimer = time.AfterFunc(s.opts.ConnectTimeout, sess.connectTimeout)
	sess.mu.Unlock()
	go sess.heartbeat()
	return sess, nil
}

// userOf returns the user of a valid token, or "".
func (s *Server) userOf(token string) string {
	if token == "" {
		return ""
	}
	user, exp, err := s.opts.Authenticate(token)
	if err != nil || !s.now().Before(exp) {
		return ""
	}
	return user
}

// admits tells whether a request of this session (a poll, a POST, an
// upgrade) that carries bearer token (or "") may act on it. The sid is the
// only credential the browser clients send; the native clients send their
// Authorization header with every request, and a session opened with a
// valid one is bound to its user, so that its sid alone, leaked or stolen,
// is worth nothing. A request with a valid token of another user than the
// session's is refused in any case.
func (s *session) admits(token string) bool {
	user := s.srv.userOf(token)
	s.mu.Lock()
	connected, owner := s.connected, s.userID
	s.mu.Unlock()
	switch {
	case s.headerUser != "":
		return user == s.headerUser
	case user != "" && connected:
		return user == owner
	}
	return true
}

// notifyLocked wakes every waiter on changed. s.mu must be held.
func (s *session) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// appendLocked queues pkt unless the queue holds SendQueue packets already;
// the caller then closes the session (reasonQueueFull) after unlocking. Every
// packet but the final ones of close goes through here, replies to what the
// client sends included, so a client that writes without reading cannot
// grow the queue either.
func (s *session) appendLocked(pkt string) bool {
	if len(s.queue) >= s.srv.opts.SendQueue {
		return false
	}
	s.queue = append(s.queue, pkt)
	s.notifyLocked()
	return true
}

// push queues a packet of the protocol itself (ping, replies).
func (s *session) push(pkt string) {
	s.mu.Lock()
	ok := s.state != stateOpen || s.appendLocked(pkt)
	s.mu.Unlock()
	if !ok {
		s.close(reasonQueueFull, false)
	}
}

// emit queues an event for userID's socket; id is its offset ("" for an
// event the Backlog does not hold). It drops the event when the socket is
// not (or no longer) that user's, or its token has expired, or the socket's
// replay carried it; it holds it while a replay runs; it disconnects the
// socket when its queue (or what its replay holds) is full.
func (s *session) emit(userID, pkt, id string) {
	s.mu.Lock()
	if s.state != stateOpen || !s.connected || s.userID != userID || !s.srv.now().Before(s.expiresAt) {
		s.mu.Unlock()
		return
	}
	if _, dup := s.replayed[id]; id != "" && dup {
		s.mu.Unlock()
		return
	}
	var ok bool
	if c := s.catching; c != nil {
		if ok = len(c.held) < max(1, s.srv.opts.SendQueue/2); ok {
			c.held = append(c.held, heldEvent{id, pkt})
		}
	} else {
		ok = s.appendLocked(pkt)
	}
	s.mu.Unlock()
	if !ok {
		s.close(reasonQueueFull, false)
	}
}

// close ends the session; it is idempotent. The socket leaves the registry
// before close returns, so no event is queued after it. With flush, the
// queued packets (and final) are still written, within WriteTimeout;
// without, the transport is dropped at once.
func (s *session) close(reason string, flush bool, final ...string) {
	s.mu.Lock()
	if s.state != stateOpen {
		s.mu.Unlock()
		return
	}
	s.state = stateClosing
	close(s.closing)
	if reason == reasonStopping {
		s.closeCode = websocket.StatusGoingAway
	}
	userID, wasConnected := s.userID, s.connected
	if s.connected {
		s.srv.reg.remove(s.userID, s)
		s.connected = false
	}
	for _, t := range []*time.Timer{s.connTimer, s.expTimer} {
		if t != nil {
			t.Stop()
		}
	}
	s.queue = append(s.queue, final...)
	if flush && s.transport == transportPolling && !s.polling && len(s.queue) == 0 {
		// Nothing to say to a poller that is not waiting: its next poll
		// finds the session gone, which it treats as a closed transport.
		flush = false
	}
	if flush {
		s.endTimer = time.AfterFunc(s.srv.opts.WriteTimeout, s.finish)
	}
	s.notifyLocked()
	s.mu.Unlock()

	if wasConnected {
		s.log.Info("socket disconnected", "userId", userID, "reason", reason)
	} else {
		s.log.Debug("connection closed", "reason", reason)
	}
	if !flush {
		s.finish()
	}
}

// finish releases the transport; the session is then gone.
func (s *session) finish() {
	s.finishOnce.Do(func() {
		s.mu.Lock()
		if s.state == stateOpen {
			// Only close moves a session out of stateOpen.
			panic("realtime: finish before close")
		}
		s.state = stateClosed
		if s.endTimer != nil {
			s.endTimer.Stop()
		}
		ws := s.ws
		s.notifyLocked()
		s.mu.Unlock()
		close(s.done)
		s.srv.forget(s)
		if ws != nil {
			_ = ws.CloseNow()
		}
	})
}

// heartbeat is the Engine.IO v4 ping/pong: the server pings, the client must
// pong within PingTimeout.
func (s *session) heartbeat() {
	o := s.srv.opts
	t := time.NewTimer(o.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		select { // a pong that nobody asked for does not count
		case <-s.pong:
		default:
		}
		s.push(string(eioPing))
		t.Reset(o.PingTimeout)
		select {
		case <-s.closing:
			return
		case <-t.C:
			s.close(reasonPingTimeout, false)
			return
		case <-s.pong:
			t.Reset(o.PingInterval)
		}
	}
}

func (s *session) connectTimeout() {
	s.mu.Lock()
	connected := s.connected
	s.mu.Unlock()
	if !connected {
		s.close(reasonConnTimeout, true)
	}
}

// handle processes one incoming Engine.IO packet; an error means the peer
// broke the protocol and the session must be closed.
func (s *session) handle(pkt string) error {
	s.in.Lock()
	defer s.in.Unlock()
	typ, payload, err := parseEIO(pkt)
	if err != nil {
		return err
	}
	switch typ {
	case eioPong:
		select {
		case s.pong <- struct{}{}:
		default:
		}
	case eioMessage:
		return s.handleSIO(payload)
	case eioClose:
		s.close(reasonClientClose, false)
	case eioNoop, eioPing:
		// Clients of protocol v4 do not ping; a stray probe is harmless.
	default:
		return fmt.Errorf("unexpected engine.io packet type %q from a client", typ)
	}
	return nil
}

func (s *session) handleSIO(payload string) error {
	p, err := parseSIO(payload)
	if err != nil {
		return err
	}
	if p.nsp != "/" {
		if p.typ == sioConnect {
			s.push(connectError(p.nsp, "Invalid namespace", nil))
		}
		return nil
	}
	switch p.typ {
	case sioConnect:
		s.connect(p.data)
	case sioDisconnect:
		s.leave()
	case sioEvent:
		return s.clientEvent(p)
	case sioAck:
		// The server never asks for acks; a stray one is harmless.
	default:
		return fmt.Errorf("unexpected socket.io packet type %q from a client", p.typ)
	}
	return nil
}

// connect authenticates a Socket.IO CONNECT and registers the socket for its
// user. Refusals leave the Engine.IO connection open, as the reference
// server does, so a client may CONNECT again with a fresh token; the
// ConnectTimeout closes it otherwise.
func (s *session) connect(auth json.RawMessage) {
	token := tokenFromAuth(auth)
	if token == "" {
		token = s.headerToken
	}
	userID, exp, err := "", time.Time{}, ErrUnauthorized
	if token != "" {
		userID, exp, err = s.srv.opts.Authenticate(token)
	}
	if err == nil && (userID == "" || !s.srv.now().Before(exp)) {
		err = ErrUnauthorized
	}
	if err != nil {
		s.log.Info("socket refused", "reason", "unauthorized")
		s.push(connectError("/", "unauthorized", nil))
		return
	}

	max := s.srv.opts.MaxConnsPerUser
	s.mu.Lock()
	if s.state != stateOpen || s.connected {
		s.mu.Unlock()
		return
	}
	// Registering and queueing the CONNECT reply under s.mu orders the reply
	// before any event, which takes s.mu too.
	if err := s.srv.reg.add(userID, s, max); err != nil {
		s.mu.Unlock()
		s.log.Warn("socket refused", "userId", userID, "reason", err.Error(), "limit", max)
		s.push(connectError("/", "too many connections", map[string]any{"code": "too_many_connections", "limit": max}))
		return
	}
	s.connected, s.userID, s.expiresAt = true, userID, exp
	s.connTimer.Stop()
	s.srv.authenticated(s)
	s.expTimer = time.AfterFunc(exp.Sub(s.srv.now()), s.expire)
	transport := s.transport
	if s.srv.opts.Backlog != nil {
		// The reply waits for the replay's first page: its pid tells the
		// client whether it recovered.
		c := &catchup{replayed: make(map[string]struct{})}
		s.catching, s.replayed = c, nil
		s.mu.Unlock()
		s.log.Info("socket connected", "userId", userID, "transport", transport)
		go s.catchUp(c, userID, resumeFrom(auth))
		return
	}
	reply, _ := json.Marshal(struct {
		SID string `json:"sid"`
	}{s.sockID})
	ok := s.appendLocked(encodeSIO(sioConnect, -1, reply))
	s.mu.Unlock()
	if !ok {
		s.close(reasonQueueFull, false)
		return
	}
	s.log.Info("socket connected", "userId", userID, "transport", transport)
}

// expire disconnects a socket whose token has expired with a Socket.IO
// DISCONNECT: the official clients then do not reconnect by themselves
// (reason "io server disconnect"); the app must get a fresh token and
// connect again.
func (s *session) expire() {
	s.mu.Lock()
	renewed := s.connected && s.srv.now().Before(s.expiresAt)
	s.mu.Unlock()
	if renewed { // the timer of a socket that left and came back with a new token
		return
	}
	s.close(reasonExpired, true, encodeSIO(sioDisconnect, -1, nil))
}

// leave handles the client's DISCONNECT: the socket stops receiving, the
// Engine.IO connection may CONNECT again within ConnectTimeout.
func (s *session) leave() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateOpen || !s.connected {
		return
	}
	s.srv.reg.remove(s.userID, s)
	s.connected = false
	s.catching, s.replayed = nil, nil
	s.expTimer.Stop()
	s.connTimer.Reset(s.srv.opts.ConnectTimeout)
	s.log.Info("socket disconnected", "userId", s.userID, "reason", "client disconnect")
}

// clientEvent answers an event from the client. The contract defines none,
// so an event asking for an ack gets one saying so, rather than leaving the
// client's callback to time out.
func (s *session) clientEvent(p sioPacket) error {
	name := p.event // parseSIO checked it
	s.mu.Lock()
	connected := s.connected
	s.mu.Unlock()
	if !connected || p.id < 0 {
		return nil
	}
	type errorBody struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	reply, _ := json.Marshal([]any{map[string]errorBody{"error": {
		Code: "unknown_event", Message: fmt.Sprintf("the server handles no event %q", name),
	}}})
	s.push(encodeSIO(sioAck, p.id, reply))
	return nil
}

// tokenFromAuth returns auth.token of a CONNECT payload, or "".
func tokenFromAuth(auth json.RawMessage) string {
	if len(auth) == 0 {
		return ""
	}
	var a struct {
		Token string `json:"token"`
	}
	if json.Unmarshal(auth, &a) != nil {
		return ""
	}
	return a.Token
}

// writeLoop is the websocket writer: it owns all writes once the session is
// on the websocket, each bounded by WriteTimeout.
func (s *session) writeLoop(c *websocket.Conn) {
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		if len(batch) > 0 {
			s.notifyLocked() // room in the queue, for a replay waiting for it
		}
		state, changed, code := s.state, s.changed, s.closeCode
		s.mu.Unlock()
		for _, pkt := range batch {
			if err := s.write(c, pkt); err != nil {
				s.log.Debug("websocket write failed", "err", err)
				s.close(reasonWriteFailed, false)
				s.finish()
				return
			}
		}
		switch state {
		case stateClosed:
			return
		case stateClosing: // nothing can be queued any more: all is written
			_ = c.Close(code, "")
			s.finish()
			return
		}
		select {
		case <-changed:
		case <-s.done:
			return
		}
	}
}

func (s *session) write(c *websocket.Conn, pkt string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.WriteTimeout)
	defer cancel()
	return c.Write(ctx, websocket.MessageText, []byte(pkt))
}

// readLoop reads websocket packets until the connection ends.
func (s *session) readLoop(c *websocket.Conn) {
	for {
		typ, data, err := c.Read(context.Background())
		if err != nil {
			reason := reasonTransport
			if errors.Is(err, websocket.ErrMessageTooBig) {
				reason = reasonPayloadLarge
			}
			s.close(reason, false)
			return
		}
		if typ != websocket.MessageText {
			err = errBinary
		} else {
			err = s.handle(string(data))
		}
		if err != nil {
			s.log.Info("protocol error", "err", err)
			s.close(reasonParseError, false)
			return
		}
	}
}
