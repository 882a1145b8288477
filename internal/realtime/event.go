package realtime

import (
	"encoding/json"
	"time"
)

// EventAssetProcessed is the Socket.IO event a user receives when one of
// their assets' jobs reaches a final state (DESIGN §3).
const EventAssetProcessed = "asset_processed"

// Status values of AssetProcessed.
const (
	StatusCompleted = "completed"
	StatusFailed    = "failed"
)

// AssetProcessed is the payload of EventAssetProcessed, exactly as
// api/asset-processed-event.schema.json describes it. Its JSON always has
// every field (null where empty) and processedAt in UTC with milliseconds.
type AssetProcessed struct {
	EventID     string          `json:"eventId"`
	AssetID     string          `json:"assetId"`
	JobID       string          `json:"jobId"`
	UserID      string          `json:"userId"`
	Status      string          `json:"status"`
	AIMetadata  json.RawMessage `json:"aiMetadata"` // a JSON object, or nil for null
	Error       *EventError     `json:"error"`
	Attempts    int             `json:"attempts"`
	ProcessedAt time.Time       `json:"processedAt"`
}

// EventError says why a job failed.
type EventError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// MarshalJSON writes processedAt as RFC 3339 with exactly three fractional
// digits, which time.Time's own encoding (up to nine, trailing zeros cut)
// does not guarantee.
func (e AssetProcessed) MarshalJSON() ([]byte, error) {
	meta := e.AIMetadata
	if len(meta) == 0 {
		meta = json.RawMessage("null")
	}
	return json.Marshal(struct {
		EventID     string          `json:"eventId"`
		AssetID     string          `json:"assetId"`
		JobID       string          `json:"jobId"`
		UserID      string          `json:"userId"`
		Status      string          `json:"status"`
		AIMetadata  json.RawMessage `json:"aiMetadata"`
		Error       *EventError     `json:"error"`
		Attempts    int             `json:"attempts"`
		ProcessedAt string          `json:"processedAt"`
	}{e.EventID, e.AssetID, e.JobID, e.UserID, e.Status, meta, e.Error, e.Attempts,
		e.ProcessedAt.UTC().Format("2006-01-02T15:04:05.000Z07:00")})
}
