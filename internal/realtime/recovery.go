package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
)

// Backlog is the source of the events a socket missed while it was away:
// the user's event log (every eventlog.Log is one). See Options.Backlog.
type Backlog interface {
	// After returns at most limit of userID's events after afterEventID
	// ("" = from the oldest kept), oldest first, or an error wrapping
	// eventlog.ErrUnknownEvent when afterEventID is not (or no longer) in
	// userID's log.
	After(ctx context.Context, userID, afterEventID string, limit int) ([]eventlog.Event, error)
	// Last returns the id of userID's newest event, or "".
	Last(ctx context.Context, userID string) (string, error)
}

const (
	// backlogPage is the most events a replay reads and queues at once.
	backlogPage = 100
	// backlogTimeout bounds each Backlog call.
	backlogTimeout = 10 * time.Second
	// pidRandom is the length of a pid's random part, newID's length.
	pidRandom = 22
)

const reasonBacklog = "backlog unavailable"

// A pid is the Socket.IO "private session id" the client keeps and sends
// back with the offset of the last event it received. Ours is not a session
// kept in memory but "<random>.<anchor>": the anchor is the id of the
// user's newest event when the pid was issued, where a replay starts for a
// client that reconnects without an offset (it had received no event).
// Anything in it only ever selects events of the authenticated user.
func newPID(anchor string) string { return newID() + "." + anchor }

func parsePID(pid string) (anchor string, ok bool) {
	if len(pid) <= pidRandom || pid[pidRandom] != '.' || len(pid)-pidRandom-1 > eventlog.MaxIDLen {
		return "", false
	}
	for _, c := range pid[:pidRandom] {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", false
		}
	}
	return pid[pidRandom+1:], true
}

// resume is where a CONNECT asks its replay to start.
type resume struct {
	asked bool   // the client named a position: pid (+offset) or lastEventId
	pid   string // the client's pid, echoed if the replay is complete; "" for lastEventId
	from  string // replay the events after this one ("" = from the oldest kept)
	bad   bool   // a position that cannot be in any log: not recovered
}

// resumeFrom reads a CONNECT auth: {pid, offset} as the official clients
// send them after a reconnection, else {lastEventId} as an app sends it
// after a relaunch. Fields of the wrong type or size are ignored.
func resumeFrom(auth json.RawMessage) resume {
	var a struct {
		PID, Offset, LastEventID json.RawMessage
	}
	if len(auth) == 0 || json.Unmarshal(auth, &a) != nil {
		return resume{}
	}
	str := func(raw json.RawMessage) string {
		var s string
		if json.Unmarshal(raw, &s) != nil || len(s) > eventlog.MaxIDLen+pidRandom+1 {
			return ""
		}
		return s
	}
	if pid := str(a.PID); pid != "" {
		if anchor, ok := parsePID(pid); ok {
			if len(a.Offset) == 0 || string(a.Offset) == "null" {
				return resume{asked: true, pid: pid, from: anchor}
			}
			if off := str(a.Offset); off != "" && len(off) <= eventlog.MaxIDLen {
				return resume{asked: true, pid: pid, from: off}
			}
			return resume{asked: true, bad: true} // an offset we never sent
		}
	}
	if id := str(a.LastEventID); id != "" && len(id) <= eventlog.MaxIDLen {
		return resume{asked: true, from: id}
	}
	return resume{}
}

// catchup is a socket's replay in progress: live events wait in held until
// the replay has queued everything the log had, then go out unless the
// replay carried them already.
type catchup struct {
	held     []heldEvent
	replayed map[string]struct{}
	last     []string // ids of the latest page queued
}

type heldEvent struct{ id, pkt string }

func (s *session) pageSize() int { return max(1, min(backlogPage, s.srv.opts.SendQueue/2)) }

// catchUp runs on its own goroutine after an accepted CONNECT when a
// Backlog is set: it queues the CONNECT reply (with the pid), then the
// user's events after the resume point, page by page as the client reads,
// then the live events that arrived meanwhile. The client is told
// recovered (its own pid comes back) only when the resume point was found,
// that is when it gets every event after it.
func (s *session) catchUp(c *catchup, userID string, r resume) {
	b, event := s.srv.opts.Backlog, s.srv.opts.BacklogEvent
	n := s.pageSize()
	var (
		page      []eventlog.Event
		pid       string
		recovered bool
	)
	if r.asked && !r.bad {
		ctx, cancel := context.WithTimeout(context.Background(), backlogTimeout)
		evs, err := b.After(ctx, userID, r.from, n)
		cancel()
		switch {
		case err == nil:
			page, recovered, pid = evs, r.pid != "", r.pid
			if pid == "" {
				// lastEventId: a reconnection that received nothing
				// resumes from the same point.
				pid = newPID(r.from)
			}
		case errors.Is(err, eventlog.ErrUnknownEvent):
			s.log.Info("socket not recovered: its last event is unknown or expired", "userId", userID)
		default:
			s.log.Warn("socket not recovered: backlog read failed", "userId", userID, "err", err)
		}
	}
	if pid == "" {
		ctx, cancel := context.WithTimeout(context.Background(), backlogTimeout)
		last, err := b.Last(ctx, userID)
		cancel()
		if err == nil {
			pid = newPID(last)
		} else {
			// No pid: the client will not offer a position next time.
			s.log.Warn("backlog read failed; socket connected without recovery", "userId", userID, "err", err)
		}
	}
	reply := struct {
		SID string `json:"sid"`
		PID string `json:"pid,omitempty"`
	}{s.sockID, pid}
	body, _ := json.Marshal(reply)
	if !s.replay(c, event, encodeSIO(sioConnect, -1, body), page) {
		return
	}
	replayed := len(page)
	for len(page) == n {
		if !s.waitRoom(c) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), backlogTimeout)
		evs, err := b.After(ctx, userID, page[len(page)-1].ID, n)
		cancel()
		if err != nil {
			// The client has its offset: closed without a DISCONNECT, it
			// reconnects and resumes from there.
			s.log.Warn("backlog read failed during a replay", "userId", userID, "err", err)
			s.close(reasonBacklog, false)
			return
		}
		page = evs
		if !s.replay(c, event, "", page) {
			return
		}
		replayed += len(page)
	}
	if !s.waitRoom(c) {
		return
	}
	s.mu.Lock()
	if s.catching != c || s.state != stateOpen {
		s.mu.Unlock()
		return
	}
	ok := true
	for _, h := range c.held {
		if _, dup := c.replayed[h.id]; h.id != "" && dup {
			continue
		}
		if ok = s.appendLocked(h.pkt); !ok {
			break
		}
	}
	s.catching = nil
	// A live copy of a replayed event may still be on its way (appended
	// before the replay read it, published after): the last page's ids
	// keep it out.
	s.replayed = make(map[string]struct{}, len(c.last))
	for _, id := range c.last {
		s.replayed[id] = struct{}{}
	}
	s.mu.Unlock()
	if !ok {
		s.close(reasonQueueFull, false)
		return
	}
	if r.asked {
		s.log.Info("socket caught up", "userId", userID, "recovered", recovered, "replayed", replayed)
	}
}

// replay queues first (if any) and the page's events, unless the catch-up
// was abandoned (the socket left or closed).
func (s *session) replay(c *catchup, event, first string, page []eventlog.Event) bool {
	pkts := make([]string, 0, len(page)+1)
	if first != "" {
		pkts = append(pkts, first)
	}
	for _, e := range page {
		pkt, err := encodeEvent(event, e.Data, e.ID)
		if err != nil {
			continue // the name was checked by New
		}
		pkts = append(pkts, pkt)
	}
	s.mu.Lock()
	if s.catching != c || s.state != stateOpen {
		s.mu.Unlock()
		return false
	}
	ok := true
	for _, pkt := range pkts {
		if ok = s.appendLocked(pkt); !ok {
			break
		}
	}
	if len(page) > 0 {
		c.last = c.last[:0]
	}
	for _, e := range page {
		c.replayed[e.ID] = struct{}{}
		c.last = append(c.last, e.ID)
	}
	s.mu.Unlock()
	if !ok {
		s.close(reasonQueueFull, false)
	}
	return ok
}

// waitRoom waits until the send queue is at most half full, so a page fits;
// false if the catch-up was abandoned meanwhile. A client that stops
// reading is closed by its ping timeout, which ends the wait.
func (s *session) waitRoom(c *catchup) bool {
	for {
		s.mu.Lock()
		if s.catching != c || s.state != stateOpen {
			s.mu.Unlock()
			return false
		}
		if len(s.queue) <= s.srv.opts.SendQueue/2 {
			s.mu.Unlock()
			return true
		}
		changed := s.changed
		s.mu.Unlock()
		<-changed // closed on every change of queue or state
	}
}

// offsetOf returns the id a live event carries as its Socket.IO offset:
// the eventId of an event the Backlog holds, else "".
func (o *Options) offsetOf(m Message) string {
	if o.Backlog == nil || m.Event != o.BacklogEvent {
		return ""
	}
	id, err := eventlog.EventID(m.Data)
	if err != nil {
		return ""
	}
	return id
}
