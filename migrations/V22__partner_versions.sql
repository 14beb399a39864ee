-- Optimistic concurrency for partners, as for campaigns: every change bumps the version, and a replace names
-- the version it was made from (If-Match).
ALTER TABLE partners ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version >= 1);
