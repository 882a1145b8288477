-- Each user's realtime events (internal/eventlog). seq is the order of the
-- appends; AUTOINCREMENT never reuses a value, even after the newest rows
-- were deleted, so an order once read stays the order.
CREATE TABLE event_log (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  TEXT    NOT NULL,
    event_id TEXT    NOT NULL,
    data     TEXT    NOT NULL,
    at       INTEGER NOT NULL, -- Unix milliseconds
    UNIQUE (user_id, event_id)
) STRICT;

CREATE INDEX event_log_user_seq ON event_log (user_id, seq);
CREATE INDEX event_log_at ON event_log (at);
