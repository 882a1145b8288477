// Package asset is the domain of an uploaded photo and the record of its
// analysis: the Asset, its lifecycle, and the Store contract every backend
// (SQLite embedded, MongoDB scaled out) implements.
//
// Lifecycle: an asset is created `processing` under one job id. The worker
// that runs that job moves it to `draft` (analysis done) or `failed` with
// Finish, exactly once per job. A `failed` asset can be moved back to
// `processing` under a new job with Reprocess. Every final state carries an
// event id and an "event owed" mark written in the same update (the outbox):
// the asset_processed event is published after the commit and the mark is
// cleared only once it is out, so a crash may repeat the event but never lose it.
package asset

import (
	"encoding/json"
	"errors"
	"slices"
	"time"
)

// Status is where an asset is in its lifecycle.
type Status string

const (
	StatusProcessing Status = "processing"
	StatusDraft      Status = "draft"
	StatusFailed     Status = "failed"
)

// Valid reports whether s is one of the known statuses.
func (s Status) Valid() bool {
	switch s {
	case StatusProcessing, StatusDraft, StatusFailed:
		return true
	}
	return false
}

// Sentinel errors of the Store contract.
var (
	// ErrNotFound: no asset with that id (or, for owner-scoped reads, none
	// owned by that user — callers never reveal which).
	ErrNotFound = errors.New("asset: not found")
	// ErrConflict: the asset is not in the state the transition requires
	// (Finish on an asset no longer processing under that job, Reprocess
	// on an asset that is not failed).
	ErrConflict = errors.New("asset: state conflict")
	// ErrDuplicate: Create with an id that already exists.
	ErrDuplicate = errors.New("asset: duplicate id")
	// ErrInvalidCursor: List with a cursor the store did not issue.
	ErrInvalidCursor = errors.New("asset: invalid cursor")
)

// Asset is one uploaded image and what is known about it.
type Asset struct {
	ID              string
	UserID          string
	Status          Status
	ProcessingJobID string
	Filename        string // the client's file name, kept only as data
	ContentType     string // from the file's magic bytes, never from the client
	Size            int64
	SHA256          string // hex
	Width, Height   int
	BlobKey         string // server-generated key in the blob store
	AIMetadata      json.RawMessage
	Error           *Error
	Attempts        int
	CreatedAt       time.Time
	UpdatedAt       time.Time

	// The pipeline timestamps of the asset's current run, in the order
	// they happen (nil: not yet, or a row stored before they existed).
	// A run is the upload, or a later retry or replay, which starts a new
	// one: ReceivedAt and EnqueuedAt are then the moment of the requeue,
	// and the rest are cleared.
	//   - ReceivedAt: the upload request reached the API handler.
	//   - EnqueuedAt: the intake stamped the asset and its job (the job
	//     payload's enqueuedAt) in the write that makes both durable; the
	//     commit and the 202 follow at once.
	//   - StartedAt: the first attempt of the job began (a handler recorded
	//     it; later attempts keep it).
	//   - AnalyzedAt: the analysis of the last attempt ended, with a result
	//     or with the error that made the state final; nil when the final
	//     state came without one (job deleted, dead job reconciled).
	//   - ProcessedAt: the final state was stored.
	//   - EventSentAt: the asset_processed event of that final state was
	//     published (written with the clearing of the outbox mark), or, on
	//     a store that logs events with the state (sqlitestore.LogEvents),
	//     appended to the event log in the final state's transaction.
	ReceivedAt  *time.Time
	EnqueuedAt  *time.Time
	StartedAt   *time.Time
	AnalyzedAt  *time.Time
	ProcessedAt *time.Time
	EventSentAt *time.Time

	// EventID identifies the asset_processed event of the current final
	// state; EventPending is true while that event is owed (outbox).
	EventID      string
	EventPending bool
}

// Clone returns a deep copy of a: stores and fakes hand out copies, so that
// a caller changing its asset never changes what is stored.
func (a *Asset) Clone() *Asset {
	c := *a
	c.AIMetadata = slices.Clone(a.AIMetadata)
	if a.Error != nil {
		e := *a.Error
		c.Error = &e
	}
	for _, t := range []**time.Time{&c.ReceivedAt, &c.EnqueuedAt, &c.StartedAt, &c.AnalyzedAt, &c.ProcessedAt, &c.EventSentAt} {
		if *t != nil {
			v := **t
			*t = &v
		}
	}
	return &c
}

// Timeline is the pipeline timestamps of one asset's current run (see
// Asset), what the SLO report reads.
type Timeline struct {
	ReceivedAt, EnqueuedAt, StartedAt, AnalyzedAt, ProcessedAt, EventSentAt *time.Time
}

// Timeline returns a's timestamps.
func (a *Asset) Timeline() Timeline {
	return Timeline{a.ReceivedAt, a.EnqueuedAt, a.StartedAt, a.AnalyzedAt, a.ProcessedAt, a.EventSentAt}
}

// Error is why an asset failed, as shown to its owner.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Outcome is the final state a job reports for its asset.
type Outcome struct {
	Status      Status // StatusDraft or StatusFailed
	AIMetadata  json.RawMessage
	Error       *Error
	Attempts    int
	AnalyzedAt  *time.Time // nil: the final state came without an analysis
	ProcessedAt time.Time
	EventID     string
}

// ListQuery selects one page of a user's assets, newest first.
type ListQuery struct {
	Status Status // empty: any
	Limit  int    // 1..100
	// After is the opaque cursor of the previous page's last asset ("" for
	// the first page).
	After string
}

// Page is one page of a listing. Next is "" on the last page.
type Page struct {
	Assets []*Asset
	Next   string
}
