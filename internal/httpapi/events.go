package httpapi

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/klectr/klectr/internal/eventlog"
)

// listEvents is GET /api/events?after=&limit=: the caller's asset_processed
// events after the event "after" (absent: from the oldest kept), for
// clients that catch up without a socket. An after that is not in the
// caller's log (expired, or another user's) is 410 unknown_event: the
// client cannot catch up from it and refetches its assets.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	after := r.URL.Query().Get("after")
	if len(after) > eventlog.MaxIDLen {
		s.writeError(w, r, errorf(codeBadRequest, "after must be an eventId of at most %d bytes", eventlog.MaxIDLen))
		return
	}
	limit := eventlog.DefaultPageLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > eventlog.MaxPageLimit {
			s.writeError(w, r, errorf(codeBadRequest, "limit must be an integer from 1 to %d", eventlog.MaxPageLimit))
			return
		}
		limit = n
	}
	page, err := eventlog.ReadPage(r.Context(), s.Events, claims(r).UserID, after, limit)
	switch {
	case errors.Is(err, eventlog.ErrUnknownEvent):
		s.writeError(w, r, errorf(codeUnknownEvent, "after is not one of your events, or it has expired: refetch your assets"))
		return
	case err != nil:
		s.writeError(w, r, internalError(codeUnavailable, err))
		return
	}
	writeJSON(w, http.StatusOK, page)
}
