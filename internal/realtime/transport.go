package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// handshakePolling opens a session whose first transport is long-polling;
// the response is the open packet alone.
func (s *Server) handshakePolling(w http.ResponseWriter, r *http.Request) {
	sess, err := s.newSession(r, transportPolling)
	if err != nil {
		refuseHandshake(w, err)
		return
	}
	h := s.handshake(transportPolling)
	h.SID = sess.id
	b, _ := json.Marshal(h)
	writePoll(w, s.opts.WriteTimeout, string(eioOpen)+string(b))
}

// serveWebSocket opens a session directly on a websocket (the client's
// transports: ["websocket"]); the first message is the open packet.
func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	// The session comes first, so that a refusal is an HTTP status the
	// client sees rather than a websocket that closes at once.
	sess, err := s.newSession(r, transportWebSocket)
	if err != nil {
		refuseHandshake(w, err)
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true}) // ServeHTTP checked the origin
	if err != nil {
		sess.close(reasonTransport, false)
		return // Accept has replied
	}
	c.SetReadLimit(s.opts.MaxPayload)
	sess.mu.Lock()
	open := sess.state == stateOpen
	if open {
		sess.ws = c
	}
	sess.mu.Unlock()
	if !open { // Stop got there first
		_ = c.CloseNow()
		return
	}
	h := s.handshake(transportWebSocket)
	h.SID = sess.id
	b, _ := json.Marshal(h)
	if err := sess.write(c, string(eioOpen)+string(b)); err != nil {
		sess.close(reasonWriteFailed, false)
		return
	}
	go sess.writeLoop(c)
	sess.readLoop(c)
}

// serveUpgrade moves a polling session onto a websocket: the client sends
// "2probe", we answer "3probe" and from then on answer polls at once (with
// a noop if nothing is queued) so the client can pause polling; its "5"
// switches the session, and everything still queued goes out on the
// websocket.
func (sess *session) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	sess.mu.Lock()
	ok := sess.state == stateOpen && sess.transport == transportPolling && !sess.probing
	if ok {
		sess.probing = true
	}
	sess.mu.Unlock()
	if !ok {
		httpError(w, http.StatusBadRequest, 3, "Bad request")
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		sess.endProbe(false, nil)
		return
	}
	c.SetReadLimit(sess.srv.opts.MaxPayload)
	if err := sess.probe(c); err != nil {
		sess.log.Debug("upgrade failed", "err", err)
		sess.endProbe(false, nil)
		_ = c.CloseNow()
		return
	}
	if !sess.endProbe(true, c) {
		_ = c.CloseNow()
		return
	}
	go sess.writeLoop(c)
	sess.readLoop(c)
}

func (sess *session) probe(c *websocket.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), upgradeTimeout)
	defer cancel()
	go func() { // a session that closes meanwhile ends the probe
		select {
		case <-sess.done:
			// After "3probe" the official client has paused polling and
			// waits to send "5" on this websocket; if the probe failed now,
			// it would stay paused (it never resumes a paused poller) until
			// its ping timeout. Let it finish the switch, so that it sees
			// its new transport close and reconnects at once.
			sess.mu.Lock()
			upgrading := sess.upgrading
			sess.mu.Unlock()
			if upgrading {
				select {
				case <-ctx.Done():
				case <-time.After(probeGrace):
				}
			}
			cancel()
		case <-ctx.Done():
		}
	}()
	typ, data, err := c.Read(ctx)
	if err != nil {
		return err
	}
	if typ != websocket.MessageText || string(data) != "2probe" {
		return errors.New("first upgrade packet is not 2probe")
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("3probe")); err != nil {
		return err
	}
	sess.mu.Lock()
	sess.upgrading = true
	sess.notifyLocked()
	sess.mu.Unlock()
	typ, data, err = c.Read(ctx)
	if err != nil {
		return err
	}
	if typ != websocket.MessageText || string(data) != string(eioUpgrade) {
		return errors.New("packet after the probe is not upgrade")
	}
	return nil
}

// endProbe ends an upgrade attempt: on success the session switches to c,
// unless it closed meanwhile (then it returns false).
func (sess *session) endProbe(success bool, c *websocket.Conn) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.probing, sess.upgrading = false, false
	if success && sess.state == stateOpen {
		sess.transport, sess.ws = transportWebSocket, c
		sess.notifyLocked()
		sess.log.Debug("upgraded to websocket")
		return true
	}
	sess.notifyLocked()
	return false
}

// servePoll answers a long-polling GET with every queued packet, waiting
// until there is one. A closing session's last poll ends with a close
// packet.
func (sess *session) servePoll(w http.ResponseWriter, r *http.Request) {
	// The reply is held until there is something to send (at the latest the
	// next ping); an http.Server WriteTimeout must not cut it short.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	sess.mu.Lock()
	if sess.transport != transportPolling {
		sess.mu.Unlock()
		httpError(w, http.StatusBadRequest, 3, "Bad request")
		return
	}
	if sess.polling {
		sess.mu.Unlock()
		sess.close(reasonPollOverlap, false)
		httpError(w, http.StatusBadRequest, 3, "Bad request")
		return
	}
	sess.polling = true
	for len(sess.queue) == 0 && sess.state == stateOpen && !sess.upgrading && sess.transport == transportPolling {
		changed := sess.changed
		sess.mu.Unlock()
		select {
		case <-changed:
		case <-r.Context().Done():
			sess.mu.Lock()
			sess.polling = false
			sess.mu.Unlock()
			return
		}
		sess.mu.Lock()
	}
	batch := sess.queue
	sess.queue = nil
	if len(batch) > 0 {
		sess.notifyLocked() // room in the queue, for a replay waiting for it
	}
	state := sess.state
	sess.polling = false
	sess.mu.Unlock()

	switch {
	case state != stateOpen:
		batch = append(batch, string(eioClose))
	case len(batch) == 0:
		batch = append(batch, string(eioNoop))
	}
	writePoll(w, sess.srv.opts.WriteTimeout, strings.Join(batch, recordSeparator))
	if state == stateClosing {
		sess.finish()
	}
}

// servePost handles a polling POST: packets separated by \x1e.
func (sess *session) servePost(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, sess.srv.opts.MaxPayload))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			sess.close(reasonPayloadLarge, false)
			httpError(w, http.StatusRequestEntityTooLarge, 3, "Payload too large")
			return
		}
		// A body that broke off or did not arrive in time (the HTTP
		// layer's read deadline).
		sess.close(reasonTransport, false)
		httpError(w, http.StatusBadRequest, 3, "Bad request")
		return
	}
	for _, pkt := range strings.Split(string(body), recordSeparator) {
		if err := sess.handle(pkt); err != nil {
			sess.log.Info("protocol error", "err", err)
			sess.close(reasonParseError, false)
			httpError(w, http.StatusBadRequest, 3, "Bad request")
			return
		}
	}
	w.Header().Set("Content-Type", "text/html")
	_, _ = io.WriteString(w, "ok")
}

func writePoll(w http.ResponseWriter, timeout time.Duration, body string) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(timeout))
	w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	_, _ = io.WriteString(w, body)
	// Flushed before the session may finish: Stop returns after that, and
	// the listener's shutdown must not cut off the close packet.
	_ = rc.Flush()
}
