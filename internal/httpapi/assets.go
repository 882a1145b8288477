package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/klectr/klectr/internal/asset"
)

// assetJSON is an asset as the contract shows it (GET /api/assets/{id}).
type assetJSON struct {
	ID              string          `json:"id"`
	UserID          string          `json:"userId"`
	Status          asset.Status    `json:"status"`
	ProcessingJobID string          `json:"processingJobId"`
	Filename        string          `json:"filename"`
	ContentType     string          `json:"contentType"`
	Size            int64           `json:"size"`
	SHA256          string          `json:"sha256"`
	Width           int             `json:"width"`
	Height          int             `json:"height"`
	AIMetadata      json.RawMessage `json:"aiMetadata"`
	Error           *asset.Error    `json:"error"`
	Attempts        int             `json:"attempts"`
	CreatedAt       string          `json:"createdAt"`
	UpdatedAt       string          `json:"updatedAt"`
	ProcessedAt     *string         `json:"processedAt"`
	// The pipeline timestamps of the current run (asset.Asset); null when
	// not reached, or for an asset stored before they were recorded.
	ReceivedAt  *string `json:"receivedAt"`
	EnqueuedAt  *string `json:"enqueuedAt"`
	StartedAt   *string `json:"startedAt"`
	AnalyzedAt  *string `json:"analyzedAt"`
	EventSentAt *string `json:"eventSentAt"`
}

func rfc3339(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

func toJSON(a *asset.Asset) assetJSON {
	j := assetJSON{
		ID: a.ID, UserID: a.UserID, Status: a.Status, ProcessingJobID: a.ProcessingJobID,
		Filename: a.Filename, ContentType: a.ContentType, Size: a.Size, SHA256: a.SHA256,
		Width: a.Width, Height: a.Height, AIMetadata: a.AIMetadata, Error: a.Error, Attempts: a.Attempts,
		CreatedAt: rfc3339(a.CreatedAt), UpdatedAt: rfc3339(a.UpdatedAt),
	}
	if len(j.AIMetadata) == 0 {
		j.AIMetadata = json.RawMessage("null")
	}
	// Rows stored before results were validated may hold invalid UTF-8,
	// which a RawMessage would pass on and strict clients refuse. Outside
	// strings it is a syntax error, so replacing it keeps the JSON valid.
	if !utf8.Valid(j.AIMetadata) {
		j.AIMetadata = bytes.ToValidUTF8(j.AIMetadata, []byte("\uFFFD"))
	}
	j.ProcessedAt = optRFC3339(a.ProcessedAt)
	j.ReceivedAt, j.EnqueuedAt, j.StartedAt = optRFC3339(a.ReceivedAt), optRFC3339(a.EnqueuedAt), optRFC3339(a.StartedAt)
	j.AnalyzedAt, j.EventSentAt = optRFC3339(a.AnalyzedAt), optRFC3339(a.EventSentAt)
	return j
}

// optRFC3339 writes an optional time; nil becomes JSON null.
func optRFC3339(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := rfc3339(*t)
	return &s
}

// ownAsset loads the asset id for the caller. Another user's asset is
// reported exactly like a missing one, so that ids reveal nothing.
func (s *Server) ownAsset(w http.ResponseWriter, r *http.Request) (*asset.Asset, bool) {
	id := r.PathValue("id")
	a, err := s.Assets.Get(r.Context(), id)
	if err == nil && a.UserID != claims(r).UserID {
		err = asset.ErrNotFound
	}
	switch {
	case errors.Is(err, asset.ErrNotFound):
		s.writeError(w, r, errorf(codeNotFound, "no asset %s", quoted(id)))
		return nil, false
	case err != nil:
		s.writeError(w, r, internalError(codeUnavailable, err))
		return nil, false
	}
	return a, true
}

func (s *Server) getAsset(w http.ResponseWriter, r *http.Request) {
	if a, ok := s.ownAsset(w, r); ok {
		writeJSON(w, http.StatusOK, toJSON(a))
	}
}

// listAssets is GET /api/assets?status=&limit=&cursor=: the caller's assets,
// newest first.
func (s *Server) listAssets(w http.ResponseWriter, r *http.Request) {
	q := asset.ListQuery{Limit: 20, After: r.URL.Query().Get("cursor")}
	if v := r.URL.Query().Get("status"); v != "" {
		q.Status = asset.Status(v)
		if !q.Status.Valid() {
			s.writeError(w, r, errorf(codeBadRequest, "status must be processing, draft or failed"))
			return
		}
	}
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			s.writeError(w, r, errorf(codeBadRequest, "limit must be an integer from 1 to 100"))
			return
		}
		q.Limit = n
	}
	page, err := s.Assets.List(r.Context(), claims(r).UserID, q)
	if errors.Is(err, asset.ErrInvalidCursor) {
		s.writeError(w, r, errorf(codeBadRequest, "cursor is not one this service returned"))
		return
	}
	if err != nil {
		s.writeError(w, r, internalError(codeUnavailable, err))
		return
	}
	out := struct {
		Assets     []assetJSON `json:"assets"`
		NextCursor *string     `json:"nextCursor"`
	}{Assets: make([]assetJSON, len(page.Assets))}
	for i, a := range page.Assets {
		out.Assets[i] = toJSON(a)
	}
	if page.Next != "" {
		out.NextCursor = &page.Next
	}
	writeJSON(w, http.StatusOK, out)
}

// retryAsset is POST /api/assets/{id}/retry: a failed asset goes back to
// processing under a new job.
func (s *Server) retryAsset(w http.ResponseWriter, r *http.Request) {
	a, ok := s.ownAsset(w, r)
	if !ok {
		return
	}
	if a.Status != asset.StatusFailed {
		s.writeError(w, r, errorf(codeConflict, "asset %s is %s; only a failed asset can be retried", a.ID, a.Status))
		return
	}
	cctx, commit := s.startCommit(r.Context(), []*asset.Asset{a})
	updated, err := s.Intake.Resubmit(cctx, a.ID, s.NewID())
	endSpan(commit, err)
	switch {
	case errors.Is(err, asset.ErrConflict):
		s.writeError(w, r, errorf(codeConflict, "asset %s is no longer failed", a.ID))
		return
	case err != nil:
		s.writeError(w, r, internalError(codeUnavailable, err))
		return
	}
	s.log.InfoContext(r.Context(), "asset resubmitted", "assetId", a.ID, "jobId", updated.ProcessingJobID, "userId", a.UserID)
	writeJSON(w, http.StatusAccepted, toJSON(updated))
}
