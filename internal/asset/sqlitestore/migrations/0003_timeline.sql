-- The pipeline timestamps of an asset's current run (asset.Asset), unix
-- milliseconds; NULL for rows stored before they existed, and for steps
-- not reached yet.
ALTER TABLE assets ADD COLUMN received_at   INTEGER;
ALTER TABLE assets ADD COLUMN enqueued_at   INTEGER;
ALTER TABLE assets ADD COLUMN started_at    INTEGER;
ALTER TABLE assets ADD COLUMN analyzed_at   INTEGER;
ALTER TABLE assets ADD COLUMN event_sent_at INTEGER;

-- Timelines: the SLO report reads the newest runs by received_at.
CREATE INDEX assets_received ON assets (received_at DESC) WHERE received_at IS NOT NULL;
