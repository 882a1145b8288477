package mongostore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/klectr/klectr/internal/asset"
)

// Config defaults.
const (
	DefaultDatabase   = "klectr"
	DefaultCollection = "assets"
	// ConnectTimeout bounds New's first contact with the server when ctx
	// has no deadline of its own.
	ConnectTimeout = 10 * time.Second
)

// Size limits. MongoDB refuses a document over 16 MiB; FerretDB stores it,
// so the store refuses it on every server. Metadata gets all but 1 MiB of
// it, which the other fields never approach.
const (
	maxDocumentBytes = 16 << 20
	maxMetadataBytes = maxDocumentBytes - 1<<20
)

// Config says where the assets live.
type Config struct {
	// URI is a MongoDB connection string (mongodb:// or mongodb+srv://).
	URI string
	// Database defaults to the URI's path, else DefaultDatabase.
	Database string
	// Collection defaults to DefaultCollection.
	Collection string
	// Logger gets start-up facts and warnings. Defaults to discarding them.
	Logger *slog.Logger
}

// Store keeps assets in a MongoDB collection.
type Store struct {
	client *mongo.Client
	coll   *mongo.Collection
	server server
	log    *slog.Logger
}

var _ asset.Store = (*Store)(nil)

// New connects, checks that the server answers (failing with the hosts
// named when it does not) and creates the collection's indexes, which is
// idempotent. Close releases the connections.
func New(ctx context.Context, cfg Config) (*Store, error) {
	cs, err := connstring.ParseAndValidate(cfg.URI)
	if err != nil {
		return nil, fmt.Errorf("mongostore: MongoDB URI: %w", err)
	}
	hosts := strings.Join(cs.Hosts, ",")
	db := cmp.Or(cfg.Database, cs.Database, DefaultDatabase)
	collection := cmp.Or(cfg.Collection, DefaultCollection)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ConnectTimeout)
		defer cancel()
	}

	client, err := mongo.Connect(options.Client().ApplyURI(cfg.URI))
	if err != nil {
		return nil, fmt.Errorf("mongostore: MongoDB at %s: %w", hosts, err)
	}
	fail := func(err error) (*Store, error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		client.Disconnect(dctx)
		return nil, fmt.Errorf("mongostore: MongoDB at %s: %w", hosts, err)
	}
	if err := client.Ping(ctx, readpref.Primary()); err != nil {
		return fail(fmt.Errorf("unreachable: %w", err))
	}
	srv, err := probe(ctx, client)
	if err != nil {
		return fail(err)
	}
	s := &Store{client: client, coll: client.Database(db).Collection(collection), server: srv, log: log}
	if err := createIndexes(ctx, s.coll); err != nil {
		return fail(fmt.Errorf("create indexes on %s.%s: %w", db, collection, err))
	}
	log.Info("mongostore: connected", "hosts", hosts, "database", db, "collection", collection,
		"transactions", srv.transactions, "ferretdb", srv.ferretDB)
	if srv.ferretDB != "" {
		log.Warn("mongostore: the server is FerretDB " + srv.ferretDB + ": guarded updates are not atomic " +
			"under concurrency (two runs of one job at once may both apply their outcome), there are no " +
			"transactions (Create undoes a failed batch by deleting it) and integers beyond int64 in AI " +
			"metadata are refused; use MongoDB in production")
	}
	return s, nil
}

// Close disconnects from the server.
func (s *Store) Close(ctx context.Context) error {
	if err := s.client.Disconnect(ctx); err != nil {
		return fmt.Errorf("mongostore: close: %w", err)
	}
	return nil
}

// Ping checks that the primary answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx, readpref.Primary()); err != nil {
		return fmt.Errorf("mongostore: ping: %w", err)
	}
	return nil
}

// Create inserts all assets or none (see the package doc for how, and
// what a crash leaves).
func (s *Store) Create(ctx context.Context, assets ...*asset.Asset) error {
	if len(assets) == 0 {
		return nil
	}
	docs := make([]any, len(assets))
	for i, a := range assets {
		d, err := s.toDocument(a)
		if err != nil {
			return fmt.Errorf("mongostore: create %s: %w", a.ID, err)
		}
		b, err := bson.Marshal(d)
		if err != nil {
			return fmt.Errorf("mongostore: create %s: %w", a.ID, err)
		}
		if len(b) > maxDocumentBytes {
			return fmt.Errorf("mongostore: create %s: the document is %d bytes, over the %d byte limit", a.ID, len(b), maxDocumentBytes)
		}
		docs[i] = bson.Raw(b)
	}
	var err error
	if s.server.transactions {
		err = s.createInTransaction(ctx, docs)
	} else {
		err = s.createOrUndo(ctx, assets, docs)
	}
	if mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("mongostore: create: %w: %w", asset.ErrDuplicate, err)
	}
	if err != nil {
		return fmt.Errorf("mongostore: create: %w", err)
	}
	return nil
}

func (s *Store) createInTransaction(ctx context.Context, docs []any) error {
	sess, err := s.client.StartSession()
	if err != nil {
		return err
	}
	defer sess.EndSession(context.WithoutCancel(ctx))
	_, err = sess.WithTransaction(ctx, func(ctx context.Context) (any, error) {
		return s.coll.InsertMany(ctx, docs)
	})
	return err
}

// cleanupTimeout bounds clean-up that runs even when the caller's ctx is
// done: the delete undoing a failed insert, the disconnect of a failed New.
const cleanupTimeout = 10 * time.Second

// createOrUndo inserts docs in order; the server stops at the first
// failure. It then deletes what was inserted: the documents before the
// first failed one when the server says which failed, else any of the
// batch, each matched by id and job id so that an asset stored by another
// call is never deleted.
func (s *Store) createOrUndo(ctx context.Context, assets []*asset.Asset, docs []any) error {
	_, err := s.coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(true))
	if err == nil {
		return nil
	}
	inserted := assets
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && bwe.WriteConcernError == nil && len(bwe.WriteErrors) > 0 {
		inserted = assets[:bwe.WriteErrors[0].Index]
	}
	if derr := s.undo(ctx, inserted); derr != nil {
		return errors.Join(err, derr)
	}
	return err
}

// undo deletes those of assets that are stored under their own job id, so
// that an asset another call stored under the same id stays. It runs even
// when ctx is done.
func (s *Store) undo(ctx context.Context, assets []*asset.Asset) error {
	if len(assets) == 0 {
		return nil
	}
	mine := make(bson.A, len(assets))
	ids := make([]string, len(assets))
	for i, a := range assets {
		mine[i] = bson.D{{Key: "_id", Value: a.ID}, {Key: "processingJobId", Value: a.ProcessingJobID}}
		ids[i] = a.ID
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if _, err := s.coll.DeleteMany(ctx, bson.D{{Key: "$or", Value: mine}}); err != nil {
		s.log.Error("mongostore: a failed create left assets behind; the reconciler will process them",
			"assetIds", ids, "err", err)
		return fmt.Errorf("undo: %w", err)
	}
	return nil
}

// Get returns the asset with that id, or asset.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*asset.Asset, error) {
	var d document
	err := s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, fmt.Errorf("mongostore: get %s: %w", id, asset.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("mongostore: get %s: %w", id, err)
	}
	a, err := d.toAsset()
	if err != nil {
		return nil, fmt.Errorf("mongostore: get %s: %w", id, err)
	}
	return a, nil
}

// Page size bounds; a Limit outside them is clamped (see assettest).
const (
	minLimit = 1
	maxLimit = 100
)

// List returns a page of userID's assets, newest first (index
// userId_createdAt_id, or userId_status_createdAt_id with a status). The
// cursor is the last asset's (createdAt, _id): a keyset, so assets added or
// removed between pages neither repeat nor skip the others.
func (s *Store) List(ctx context.Context, userID string, q asset.ListQuery) (asset.Page, error) {
	limit := min(max(q.Limit, minLimit), maxLimit)
	filter := bson.D{{Key: "userId", Value: userID}}
	if q.Status != "" {
		if !q.Status.Valid() {
			return asset.Page{}, fmt.Errorf("mongostore: list: unknown status %q", q.Status)
		}
		filter = append(filter, bson.E{Key: "status", Value: q.Status})
	}
	if q.After != "" {
		ms, id, err := asset.DecodeCursor(q.After)
		if err != nil {
			return asset.Page{}, fmt.Errorf("mongostore: list: %w", err)
		}
		t := time.UnixMilli(ms)
		filter = append(filter, bson.E{Key: "$or", Value: bson.A{
			bson.D{{Key: "createdAt", Value: bson.D{{Key: "$lt", Value: t}}}},
			bson.D{{Key: "createdAt", Value: t}, {Key: "_id", Value: bson.D{{Key: "$lt", Value: id}}}},
		}})
	}
	// One asset more than the page tells whether there is a next page.
	as, err := s.find(ctx, filter, options.Find().
		SetSort(bson.D{{Key: "createdAt", Value: -1}, {Key: "_id", Value: -1}}).
		SetLimit(int64(limit+1)))
	if err != nil {
		return asset.Page{}, fmt.Errorf("mongostore: list: %w", err)
	}
	page := asset.Page{Assets: as}
	if len(as) > limit {
		page.Assets = as[:limit]
		last := as[limit-1]
		page.Next = asset.EncodeCursor(last.CreatedAt.UnixMilli(), last.ID)
	}
	return page, nil
}

// guard is the filter of an update that applies only while the asset is
// processing under jobID.
func guard(id, jobID string) bson.D {
	return bson.D{{Key: "_id", Value: id}, {Key: "status", Value: asset.StatusProcessing}, {Key: "processingJobId", Value: jobID}}
}

// RecordAttempt sets Attempts (and UpdatedAt, and StartedAt unless set:
// $min of an absent field) while the asset is processing under jobID:
// asset.ErrConflict if it is not, asset.ErrNotFound if it is gone.
func (s *Store) RecordAttempt(ctx context.Context, id, jobID string, attempt int, now time.Time) error {
	res, err := s.coll.UpdateOne(ctx, guard(id, jobID), bson.D{
		{Key: "$set", Value: bson.D{
			{Key: "attempts", Value: attempt},
			{Key: "updatedAt", Value: now},
		}},
		{Key: "$min", Value: bson.D{{Key: "startedAt", Value: now}}},
	})
	if err == nil && res.MatchedCount == 0 {
		err = s.missingOrConflict(ctx, id)
	}
	if err != nil {
		return fmt.Errorf("mongostore: record attempt %s: %w", id, err)
	}
	return nil
}

// Finish applies out in one update guarded by status and job, and marks its
// event owed in the same update. asset.ErrConflict when the asset is not
// processing under jobID, asset.ErrNotFound when it is gone; an outcome
// that is not final or has no event id is refused.
func (s *Store) Finish(ctx context.Context, id, jobID string, out asset.Outcome) (*asset.Asset, error) {
	if out.Status != asset.StatusDraft && out.Status != asset.StatusFailed {
		return nil, fmt.Errorf("mongostore: finish %s: outcome status %q is not final", id, out.Status)
	}
	if out.EventID == "" {
		return nil, fmt.Errorf("mongostore: finish %s: outcome has no event id", id)
	}
	meta, err := s.metadata(out.AIMetadata)
	if err != nil {
		return nil, fmt.Errorf("mongostore: finish %s: %w", id, err)
	}
	a, err := s.findOneAndUpdate(ctx, id, guard(id, jobID), bson.D{
		{Key: "status", Value: out.Status},
		{Key: "aiMetadata", Value: meta},
		{Key: "error", Value: toErrorDoc(out.Error)},
		{Key: "attempts", Value: out.Attempts},
		{Key: "processedAt", Value: out.ProcessedAt},
		{Key: "updatedAt", Value: out.ProcessedAt},
		{Key: "eventId", Value: out.EventID},
		{Key: "eventPending", Value: true},
		{Key: "analyzedAt", Value: out.AnalyzedAt},
		{Key: "eventSentAt", Value: nil},
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("mongostore: finish %s: %w", id, err)
	}
	return a, nil
}

// Reprocess moves a failed asset to processing under newJobID, clearing the
// previous outcome and its event (a failure whose event is still owed is
// superseded by the next final state's). asset.ErrConflict if the asset is
// not failed, asset.ErrNotFound if there is none.
func (s *Store) Reprocess(ctx context.Context, id, newJobID string, now time.Time) (*asset.Asset, error) {
	if newJobID == "" {
		return nil, fmt.Errorf("mongostore: reprocess %s: empty job id", id)
	}
	a, err := s.findOneAndUpdate(ctx, id,
		bson.D{{Key: "_id", Value: id}, {Key: "status", Value: asset.StatusFailed}},
		bson.D{
			{Key: "status", Value: asset.StatusProcessing},
			{Key: "processingJobId", Value: newJobID},
			{Key: "aiMetadata", Value: nil},
			{Key: "error", Value: nil},
			{Key: "attempts", Value: 0},
			{Key: "processedAt", Value: nil},
			{Key: "updatedAt", Value: now},
			{Key: "eventId", Value: ""},
			{Key: "eventPending", Value: false},
			{Key: "receivedAt", Value: now},
			{Key: "enqueuedAt", Value: now},
			{Key: "analyzedAt", Value: nil},
			{Key: "eventSentAt", Value: nil},
		},
		// absent, so that the next RecordAttempt's $min sets it
		bson.D{{Key: "startedAt", Value: ""}})
	if err != nil {
		return nil, fmt.Errorf("mongostore: reprocess %s: %w", id, err)
	}
	return a, nil
}

// findOneAndUpdate sets fields on asset id (and unsets those of unset, if
// any) if filter matches it, and returns it as updated; when filter matches
// nothing, asset.ErrNotFound or asset.ErrConflict.
func (s *Store) findOneAndUpdate(ctx context.Context, id string, filter, set, unset bson.D) (*asset.Asset, error) {
	var d document
	update := bson.D{{Key: "$set", Value: set}}
	if len(unset) > 0 {
		update = append(update, bson.E{Key: "$unset", Value: unset})
	}
	err := s.coll.FindOneAndUpdate(ctx, filter, update,
		options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, s.missingOrConflict(ctx, id)
	}
	if err != nil {
		return nil, err
	}
	return d.toAsset()
}

// PendingEvents returns up to limit assets whose event is owed, oldest
// final state first (index eventPending_processedAt_id).
func (s *Store) PendingEvents(ctx context.Context, limit int) ([]*asset.Asset, error) {
	if limit < 1 {
		return nil, fmt.Errorf("mongostore: pending events: limit %d is not positive", limit)
	}
	as, err := s.find(ctx, bson.D{{Key: "eventPending", Value: true}}, options.Find().
		SetSort(bson.D{{Key: "processedAt", Value: 1}, {Key: "_id", Value: 1}}).
		SetLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("mongostore: pending events: %w", err)
	}
	return as, nil
}

// EventSent clears the owed mark, recording sentAt, if eventID is still the
// owed event; a stale id, a repeat or a deleted asset is not an error.
func (s *Store) EventSent(ctx context.Context, id, eventID string, sentAt time.Time) error {
	_, err := s.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: id}, {Key: "eventId", Value: eventID}, {Key: "eventPending", Value: true}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "eventPending", Value: false}, {Key: "eventSentAt", Value: sentAt}}}})
	if err != nil {
		return fmt.Errorf("mongostore: event sent %s: %w", id, err)
	}
	return nil
}

// Delete removes the assets with those ids; missing ids are ignored.
func (s *Store) Delete(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.coll.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}); err != nil {
		return fmt.Errorf("mongostore: delete: %w", err)
	}
	return nil
}

// Processing returns up to limit processing assets last updated before
// updatedBefore with an id after afterID, in id order (index
// status_id_updatedAt).
func (s *Store) Processing(ctx context.Context, updatedBefore time.Time, afterID string, limit int) ([]*asset.Asset, error) {
	if limit < 1 {
		return nil, fmt.Errorf("mongostore: processing: limit %d is not positive", limit)
	}
	as, err := s.find(ctx, bson.D{
		{Key: "status", Value: asset.StatusProcessing},
		{Key: "_id", Value: bson.D{{Key: "$gt", Value: afterID}}},
		{Key: "updatedAt", Value: bson.D{{Key: "$lt", Value: updatedBefore}}},
	}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("mongostore: processing: %w", err)
	}
	return as, nil
}

// BlobsInUse reports which of keys an asset references (index blobKey);
// keys no asset references are absent from the map.
func (s *Store) BlobsInUse(ctx context.Context, keys []string) (map[string]bool, error) {
	used := make(map[string]bool)
	if len(keys) == 0 {
		return used, nil
	}
	cur, err := s.coll.Find(ctx, bson.D{{Key: "blobKey", Value: bson.D{{Key: "$in", Value: keys}}}},
		options.Find().SetProjection(bson.D{{Key: "blobKey", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mongostore: blobs in use: %w", err)
	}
	var docs []struct {
		BlobKey string `bson:"blobKey"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongostore: blobs in use: %w", err)
	}
	for _, d := range docs {
		used[d.BlobKey] = true
	}
	return used, nil
}

// Timelines returns the timelines of up to limit assets received at or
// after since, newest first (index receivedAt). A document without a
// receivedAt date (stored before it existed) does not match $gte.
func (s *Store) Timelines(ctx context.Context, since time.Time, limit int) ([]asset.Timeline, error) {
	if limit < 1 {
		return nil, fmt.Errorf("mongostore: timelines: limit %d is not positive", limit)
	}
	cur, err := s.coll.Find(ctx, bson.D{{Key: "receivedAt", Value: bson.D{{Key: "$gte", Value: since}}}},
		options.Find().SetSort(bson.D{{Key: "receivedAt", Value: -1}}).SetLimit(int64(limit)).
			SetProjection(bson.D{{Key: "receivedAt", Value: 1}, {Key: "enqueuedAt", Value: 1}, {Key: "startedAt", Value: 1},
				{Key: "analyzedAt", Value: 1}, {Key: "processedAt", Value: 1}, {Key: "eventSentAt", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mongostore: timelines: %w", err)
	}
	var docs []document
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongostore: timelines: %w", err)
	}
	out := make([]asset.Timeline, len(docs))
	for i, d := range docs {
		out[i] = asset.Timeline{ReceivedAt: utc(d.ReceivedAt), EnqueuedAt: utc(d.EnqueuedAt), StartedAt: utc(d.StartedAt),
			AnalyzedAt: utc(d.AnalyzedAt), ProcessedAt: utc(d.ProcessedAt), EventSentAt: utc(d.EventSentAt)}
	}
	return out, nil
}

// missingOrConflict explains why a guarded update matched no document.
func (s *Store) missingOrConflict(ctx context.Context, id string) error {
	err := s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}},
		options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return asset.ErrNotFound
	case err != nil:
		return err
	}
	return asset.ErrConflict
}

func (s *Store) find(ctx context.Context, filter bson.D, opts *options.FindOptionsBuilder) ([]*asset.Asset, error) {
	cur, err := s.coll.Find(ctx, filter, opts)
	if err != nil {
		return nil, err
	}
	var docs []document
	if err := cur.All(ctx, &docs); err != nil {
		return nil, err
	}
	as := make([]*asset.Asset, len(docs))
	for i := range docs {
		if as[i], err = docs[i].toAsset(); err != nil {
			return nil, err
		}
	}
	return as, nil
}
