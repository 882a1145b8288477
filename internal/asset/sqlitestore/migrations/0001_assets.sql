-- Assets of the embedded mode. Times are unix milliseconds (UTC), so they
-- sort as integers and round-trip at the precision the contract promises.
CREATE TABLE assets (
    id                TEXT    NOT NULL PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('processing', 'draft', 'failed')),
    processing_job_id TEXT    NOT NULL,
    filename          TEXT    NOT NULL,
    content_type      TEXT    NOT NULL,
    size              INTEGER NOT NULL,
    sha256            TEXT    NOT NULL,
    width             INTEGER NOT NULL,
    height            INTEGER NOT NULL,
    blob_key          TEXT    NOT NULL,
    ai_metadata       TEXT    CHECK (ai_metadata IS NULL OR json_valid(ai_metadata)),
    -- NULL code and message: no error; both set (possibly empty): an error.
    error_code        TEXT,
    error_message     TEXT,
    attempts          INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    processed_at      INTEGER,
    event_id          TEXT    NOT NULL,
    event_pending     INTEGER NOT NULL CHECK (event_pending IN (0, 1)),
    CHECK ((error_code IS NULL) = (error_message IS NULL))
) STRICT;

-- List: one user's assets newest first, with and without a status filter;
-- the trailing id makes the keyset cursor (created_at, id) an index range.
CREATE INDEX assets_user_created ON assets (user_id, created_at DESC, id DESC);
CREATE INDEX assets_user_status_created ON assets (user_id, status, created_at DESC, id DESC);

-- PendingEvents: only the few rows whose event is owed, oldest first.
CREATE INDEX assets_event_pending ON assets (processed_at, id) WHERE event_pending = 1;
