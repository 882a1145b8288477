// Package mongostore is the asset.Store of the scaled-out mode: one
// document per asset in a MongoDB collection ("assets" by default), shared
// by every api and worker process.
//
// Documents use the JSON API's field names (_id is the asset id; userId,
// status, processingJobId, filename, contentType, size, sha256, width,
// height, blobKey, aiMetadata, error{code,message}, attempts, createdAt,
// updatedAt, processedAt, eventId, eventPending, and the pipeline timestamps
// receivedAt, enqueuedAt, startedAt, analyzedAt, eventSentAt), so other readers of the
// collection see what the API shows. Times are BSON dates (milliseconds);
// aiMetadata, error and processedAt are null when unset. aiMetadata is a
// BSON document whose keys are escaped where MongoDB refuses them (see
// escapeKey: '%', '.' and a leading '$' become %25, %2E and %24); numbers
// keep their kind and precision. A document over 16 MiB is refused here,
// since not every MongoDB-wire server enforces the limit.
//
// Every state change (RecordAttempt, Finish, Reprocess, EventSent) is one
// single-document update whose filter is its guard (status, and for a job
// processingJobId, or the owed eventId); the outbox mark eventPending is
// written by the same update as the final state. On MongoDB that is atomic:
// of concurrent Finish calls for one job exactly one wins. FerretDB (which
// New detects and warns about) evaluates the filter and writes in two
// steps, so racing calls may each win; a job then runs its final update
// twice and its event may repeat. FerretDB also has no decimal128, so there
// an integer beyond int64 in AI metadata is refused rather than rounded,
// and it reads a stored -0.0 back as 0.0.
//
// Create writes an upload's assets all or none:
//   - on a replica set or sharded cluster, in one transaction. A crash
//     leaves all of them or none.
//   - on a standalone server (or FerretDB), with one ordered insertMany and,
//     when it fails, a delete of the documents it did insert (matched by id
//     and job id, so an asset of another call is never removed). A crash of
//     the process between the two, or a failing delete, leaves some of the
//     upload's assets `processing` without a 202 having been sent.
//
// In both shapes the caller enqueues the assets' jobs after Create returns;
// a crash between the two leaves `processing` assets whose job the queue
// does not know. The reconciler repairs both cases: it pages through
// Processing and re-enqueues every asset whose job is missing, so each
// such asset is analysed and its event sent like any other.
package mongostore
