-- Queued work comes back by itself, and a batch taken back gives its reservation back first.
--
-- A queued batch carries a lease too (until its message is due at the bridge plus a grace, renewed by the bridge
-- on every pass): when its message is lost, the pacer takes it back with a new fence. And every claim records
-- what it reserved for the batch (clicks and spend, on the campaign's local day), so that a batch claimed and
-- never sent, or taken back after its lease ran out, is not reserved twice against the cap and the budget.
ALTER TABLE batches DROP CONSTRAINT batches_check;
UPDATE batches SET lease_expires_at = COALESCE(release_at, now()) + interval '1 hour' WHERE state = 'queued';
ALTER TABLE batches ADD CONSTRAINT batches_lease_check
    CHECK ((state IN ('claimed', 'queued')) = (lease_expires_at IS NOT NULL));

ALTER TABLE batches
    ADD COLUMN reserved_day     date,
    ADD COLUMN reserved_clicks  integer NOT NULL DEFAULT 0 CHECK (reserved_clicks >= 0),
    ADD COLUMN reserved_micros  bigint NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    ADD CONSTRAINT batches_reservation_check CHECK (reserved_clicks = 0 OR reserved_day IS NOT NULL);

-- The claim's scan for queued batches whose lease ran out.
CREATE INDEX batches_queued_lease ON batches (lease_expires_at) WHERE state = 'queued';
