-- Optimistic concurrency for the management API: every change to a campaign's row bumps its version, and an
-- update names the version it was made from (If-Match), so two people editing at once cannot silently erase
-- each other's changes.
ALTER TABLE campaigns ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version >= 1);
-- Listing by partner, status, name or creation with keyset pagination.
CREATE INDEX campaigns_created ON campaigns (created_at, campaign_id);
CREATE INDEX campaigns_name ON campaigns (name, campaign_id);
