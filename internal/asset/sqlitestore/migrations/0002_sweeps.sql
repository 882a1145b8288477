-- Processing: the reconciler's sweep pages through processing assets by id.
CREATE INDEX assets_processing ON assets (id) WHERE status = 'processing';
-- BlobsInUse: the orphan-blob sweep looks blobs up by key.
CREATE INDEX assets_blob_key ON assets (blob_key);
