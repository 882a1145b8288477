package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// jobJSON is a job as the admin API shows it.
type jobJSON struct {
	ID          string          `json:"id"`
	Queue       string          `json:"queue"`
	State       queue.State     `json:"state"`
	Attempt     int             `json:"attempt"`
	MaxAttempts int             `json:"maxAttempts"`
	Payload     json.RawMessage `json:"payload"`
	Errors      []string        `json:"errors"`
	EnqueuedAt  string          `json:"enqueuedAt"`
	FinishedAt  *string         `json:"finishedAt"`
}

func jobToJSON(i queue.Info) jobJSON {
	j := jobJSON{ID: i.ID, Queue: i.Queue, State: i.State, Attempt: i.Attempt, MaxAttempts: i.MaxAttempts,
		Payload: i.Payload, Errors: i.Errors, EnqueuedAt: rfc3339(i.EnqueuedAt)}
	if j.Errors == nil {
		j.Errors = []string{}
	}
	if i.FinishedAt != nil {
		f := rfc3339(*i.FinishedAt)
		j.FinishedAt = &f
	}
	return j
}

// maxHistory is the longest ?history= of GET /api/admin/queues: what the
// app's sampler keeps.
const maxHistory = time.Hour

// adminQueues is GET /api/admin/queues: job counts by state, and the AI
// breaker's state where this process holds one. With ?history=<duration>
// (at most an hour) it adds this process's samples of the counts over that
// span, oldest first.
func (s *Server) adminQueues(w http.ResponseWriter, r *http.Request) {
	var history time.Duration
	if v := r.URL.Query().Get("history"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > maxHistory {
			e := errorf(codeBadRequest, "history must be a duration from 1s to 1h, such as 1h or 15m")
			e.Field = "history"
			s.writeError(w, r, e)
			return
		}
		history = d
	}
	counts, err := s.Jobs.Counts(r.Context())
	if err != nil {
		s.writeError(w, r, internalError(codeUnavailable, err))
		return
	}
	byState := make(map[queue.State]int, len(queue.States()))
	for _, st := range queue.States() {
		byState[st] = counts[st]
	}
	body := map[string]any{
		"queues": []any{map[string]any{"name": queue.AIProcessing, "counts": byState}},
	}
	if s.AIBreaker != nil {
		body["aiBreaker"] = s.AIBreaker()
	}
	if history > 0 {
		type sample struct {
			At     string              `json:"at"`
			Counts map[queue.State]int `json:"counts"`
		}
		out := []sample{}
		if s.QueueHistory != nil {
			for _, smp := range s.QueueHistory(s.Now().Add(-history)) {
				c := make(map[queue.State]int, len(queue.States()))
				for _, st := range queue.States() {
					c[st] = smp.Counts[st]
				}
				out = append(out, sample{At: rfc3339(smp.At), Counts: c})
			}
		}
		body["history"] = out
	}
	writeJSON(w, http.StatusOK, body)
}

// adminListJobs is GET /api/admin/jobs?state=dead&limit=.
func (s *Server) adminListJobs(w http.ResponseWriter, r *http.Request) {
	state := queue.State(r.URL.Query().Get("state"))
	if state == "" {
		state = queue.Dead
	}
	if !state.Valid() {
		s.writeError(w, r, errorf(codeBadRequest, "state must be one of pending, active, retrying, completed, dead"))
		return
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, r, errorf(codeBadRequest, "limit must be an integer from 1 to 1000"))
			return
		}
		limit = n
	}
	infos, err := s.Jobs.List(r.Context(), state, limit)
	if err != nil {
		s.writeError(w, r, internalError(codeUnavailable, err))
		return
	}
	out := make([]jobJSON, len(infos))
	for i, info := range infos {
		out[i] = jobToJSON(info)
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": out})
}

func (s *Server) adminGetJob(w http.ResponseWriter, r *http.Request) {
	info, err := s.Jobs.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, s.jobError(r, err))
		return
	}
	writeJSON(w, http.StatusOK, jobToJSON(info))
}

// adminRetryJob is POST /api/admin/jobs/{id}/retry: replay a dead job.
func (s *Server) adminRetryJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Intake.Replay(r.Context(), id); err != nil {
		s.writeError(w, r, s.jobError(r, err))
		return
	}
	s.log.InfoContext(r.Context(), "dead job replayed", "jobId", id, "userId", claims(r).UserID)
	s.adminGetJob(w, r)
}

// adminDeleteJob is DELETE /api/admin/jobs/{id}: the job goes, and its
// asset, if still processing under it, fails (job_deleted).
func (s *Server) adminDeleteJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Intake.DeleteJob(r.Context(), id); err != nil {
		s.writeError(w, r, s.jobError(r, err))
		return
	}
	s.log.InfoContext(r.Context(), "job deleted", "jobId", id, "userId", claims(r).UserID)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) jobError(r *http.Request, err error) *apiError {
	id := r.PathValue("id")
	switch {
	case errors.Is(err, queue.ErrNotFound):
		return errorf(codeNotFound, "no job %q", id)
	case errors.Is(err, queue.ErrNotDead):
		return errorf(codeConflict, "job %s is not dead; only dead jobs can be replayed", id)
	case errors.Is(err, queue.ErrActive):
		return errorf(codeConflict, "job %s is running; it can be deleted once it stops", id)
	}
	return internalError(codeUnavailable, err)
}
