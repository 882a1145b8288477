package asset

import (
	"context"
	"time"
)

// Store keeps assets. Every implementation passes assettest.TestStore.
//
// Contract:
//   - Create inserts all assets or none (ErrDuplicate when an id exists).
//   - Get returns ErrNotFound for an unknown id. Owner checks are the
//     caller's: the HTTP layer treats another user's asset as not found.
//   - List returns only userID's assets, newest first (CreatedAt, then ID,
//     descending), filtered by status, paginated by an opaque cursor that
//     stays valid while assets are added; a cursor it did not issue gives
//     ErrInvalidCursor.
//   - Create stores every field, the timestamps included.
//   - RecordAttempt sets Attempts while the asset is processing under jobID,
//     and StartedAt to now unless it is set; otherwise ErrConflict.
//   - Finish applies a job's final Outcome only while the asset is
//     processing under jobID, and in the same atomic update sets EventID
//     and EventPending=true and clears EventSentAt. Otherwise ErrConflict: the job is a repeat and
//     must be acknowledged without work.
//   - Reprocess moves a failed asset to processing under newJobID, clearing
//     the previous outcome (ErrConflict if it is not failed); a new run
//     starts: ReceivedAt and EnqueuedAt become now, the later timestamps nil.
//   - PendingEvents returns assets whose event is owed, oldest first;
//     EventSent clears the mark and sets EventSentAt to sentAt, only if
//     eventID is still the owed one.
//   - Timelines returns the timelines of up to limit assets whose
//     ReceivedAt is at or after since, newest ReceivedAt first (assets
//     stored without one are never returned).
//   - Delete removes assets by id (missing ids are ignored); it exists so
//     that a backend pair without a shared transaction can undo a Create.
//   - Processing returns up to limit assets that are processing, were last
//     updated before updatedBefore and have an id greater than afterID, in
//     id order (ids are ULIDs: oldest first). The reconciler pages through
//     it to find assets whose job the queue no longer knows.
//   - BlobsInUse reports which of keys some asset references; the orphan
//     sweep deletes the other blobs. Keys no asset references are absent
//     from the map.
type Store interface {
	Create(ctx context.Context, assets ...*Asset) error
	Get(ctx context.Context, id string) (*Asset, error)
	List(ctx context.Context, userID string, q ListQuery) (Page, error)
	RecordAttempt(ctx context.Context, id, jobID string, attempt int, now time.Time) error
	Finish(ctx context.Context, id, jobID string, out Outcome) (*Asset, error)
	Reprocess(ctx context.Context, id, newJobID string, now time.Time) (*Asset, error)
	PendingEvents(ctx context.Context, limit int) ([]*Asset, error)
	EventSent(ctx context.Context, id, eventID string, sentAt time.Time) error
	Delete(ctx context.Context, ids ...string) error
	Processing(ctx context.Context, updatedBefore time.Time, afterID string, limit int) ([]*Asset, error)
	BlobsInUse(ctx context.Context, keys []string) (map[string]bool, error)
	Timelines(ctx context.Context, since time.Time, limit int) ([]Timeline, error)
	Ping(ctx context.Context) error
}
