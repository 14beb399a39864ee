-- Each campaign's ingest mapping (source columns of click fields, derived click ids, the zone of naive
-- timestamps, the CSV delimiter), as set through the API; '{}' is every default.
ALTER TABLE campaigns ADD COLUMN ingest jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(ingest) = 'object');
-- A rejected row's kind of reason (a stable code, for counts per reason) and the field that failed.
ALTER TABLE upload_rejects ADD COLUMN code text NOT NULL DEFAULT 'unknown', ADD COLUMN field text;
-- Rejected rows per reason code, written when the upload ends.
ALTER TABLE uploads ADD COLUMN reject_counts jsonb NOT NULL DEFAULT '{}';
