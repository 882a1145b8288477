package mongostore

import (
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/klectr/klectr/internal/asset"
)

// document is an asset as stored; see the package doc for its fields.
type document struct {
	ID              string        `bson:"_id"`
	UserID          string        `bson:"userId"`
	Status          asset.Status  `bson:"status"`
	ProcessingJobID string        `bson:"processingJobId"`
	Filename        string        `bson:"filename"`
	ContentType     string        `bson:"contentType"`
	Size            int64         `bson:"size"`
	SHA256          string        `bson:"sha256"`
	Width           int           `bson:"width"`
	Height          int           `bson:"height"`
	BlobKey         string        `bson:"blobKey"`
	AIMetadata      bson.RawValue `bson:"aiMetadata"`
	Error           *errorDoc     `bson:"error"`
	Attempts        int           `bson:"attempts"`
	CreatedAt       time.Time     `bson:"createdAt"`
	UpdatedAt       time.Time     `bson:"updatedAt"`
	ProcessedAt     *time.Time    `bson:"processedAt"`
	EventID         string        `bson:"eventId"`
	EventPending    bool          `bson:"eventPending"`
	// The pipeline timestamps (asset.Timeline). startedAt is absent, not
	// null, until the first attempt: RecordAttempt sets it with $min,
	// which would keep a null.
	ReceivedAt  *time.Time `bson:"receivedAt"`
	EnqueuedAt  *time.Time `bson:"enqueuedAt"`
	StartedAt   *time.Time `bson:"startedAt,omitempty"`
	AnalyzedAt  *time.Time `bson:"analyzedAt"`
	EventSentAt *time.Time `bson:"eventSentAt"`
}

// utc is t in UTC (the driver decodes dates in local time); nil stays nil.
func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

type errorDoc struct {
	Code    string `bson:"code"`
	Message string `bson:"message"`
}

func toErrorDoc(e *asset.Error) *errorDoc {
	if e == nil {
		return nil
	}
	return &errorDoc{Code: e.Code, Message: e.Message}
}

// metadata converts AI metadata for storage, refusing what the server
// cannot keep exactly or MongoDB would refuse.
func (s *Store) metadata(raw []byte) (bson.RawValue, error) {
	v, err := metadataToBSON(raw, s.server.ferretDB == "")
	if err != nil {
		return bson.RawValue{}, err
	}
	if len(v.Value) > maxMetadataBytes {
		return bson.RawValue{}, fmt.Errorf("aiMetadata is %d bytes in BSON, over the %d byte limit", len(v.Value), maxMetadataBytes)
	}
	return v, nil
}

func (s *Store) toDocument(a *asset.Asset) (*document, error) {
	meta, err := s.metadata(a.AIMetadata)
	if err != nil {
		return nil, err
	}
	return &document{
		ID: a.ID, UserID: a.UserID, Status: a.Status, ProcessingJobID: a.ProcessingJobID,
		Filename: a.Filename, ContentType: a.ContentType, Size: a.Size, SHA256: a.SHA256,
		Width: a.Width, Height: a.Height, BlobKey: a.BlobKey, AIMetadata: meta,
		Error: toErrorDoc(a.Error), Attempts: a.Attempts,
		CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt, ProcessedAt: a.ProcessedAt,
		EventID: a.EventID, EventPending: a.EventPending,
		ReceivedAt: a.ReceivedAt, EnqueuedAt: a.EnqueuedAt, StartedAt: a.StartedAt,
		AnalyzedAt: a.AnalyzedAt, EventSentAt: a.EventSentAt,
	}, nil
}

func (d *document) toAsset() (*asset.Asset, error) {
	meta, err := metadataToJSON(d.AIMetadata)
	if err != nil {
		return nil, fmt.Errorf("asset %s: %w", d.ID, err)
	}
	a := &asset.Asset{
		ID: d.ID, UserID: d.UserID, Status: d.Status, ProcessingJobID: d.ProcessingJobID,
		Filename: d.Filename, ContentType: d.ContentType, Size: d.Size, SHA256: d.SHA256,
		Width: d.Width, Height: d.Height, BlobKey: d.BlobKey, AIMetadata: meta,
		Attempts: d.Attempts, CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC(),
		EventID: d.EventID, EventPending: d.EventPending,
		ReceivedAt: utc(d.ReceivedAt), EnqueuedAt: utc(d.EnqueuedAt), StartedAt: utc(d.StartedAt),
		AnalyzedAt: utc(d.AnalyzedAt), EventSentAt: utc(d.EventSentAt),
	}
	if d.Error != nil {
		a.Error = &asset.Error{Code: d.Error.Code, Message: d.Error.Message}
	}
	if d.ProcessedAt != nil {
		p := d.ProcessedAt.UTC()
		a.ProcessedAt = &p
	}
	return a, nil
}
