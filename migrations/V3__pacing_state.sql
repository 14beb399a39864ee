-- Pacing counters, locked and updated by the pacer in the same transaction as its claim. One row per campaign
-- and per partner: a pacer's reservation is serialised by the row lock, so concurrent pacers cannot together
-- exceed a cap, a budget or a rate. Each counter carries the day or window it belongs to, so a stale one reads
-- as zero (see clickpacer::pacing::PacingState).
CREATE TABLE campaign_pacing (
    campaign_id            text PRIMARY KEY REFERENCES campaigns ON DELETE CASCADE,
    local_day              date,
    released_today         bigint NOT NULL DEFAULT 0 CHECK (released_today >= 0),
    reserved_today_micros  bigint NOT NULL DEFAULT 0 CHECK (reserved_today_micros >= 0),
    reserved_total_micros  bigint NOT NULL DEFAULT 0 CHECK (reserved_total_micros >= 0),
    second_start           timestamptz NOT NULL DEFAULT 'epoch',
    second_released        bigint NOT NULL DEFAULT 0 CHECK (second_released >= 0),
    minute_start           timestamptz NOT NULL DEFAULT 'epoch',
    minute_released        bigint NOT NULL DEFAULT 0 CHECK (minute_released >= 0),
    hour_start             timestamptz NOT NULL DEFAULT 'epoch',
    hour_released          bigint NOT NULL DEFAULT 0 CHECK (hour_released >= 0),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE partner_pacing (
    partner_id       text PRIMARY KEY REFERENCES partners ON DELETE CASCADE,
    second_start     timestamptz NOT NULL DEFAULT 'epoch',
    second_released  bigint NOT NULL DEFAULT 0 CHECK (second_released >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- When the claimed batch becomes visible on the queue (claim time + SQS DelaySeconds), and over how many
-- seconds the bridge spreads its clicks (a batch larger than a second's allowance is reserved across seconds).
ALTER TABLE batches
    ADD COLUMN release_at timestamptz,
    ADD COLUMN spread_seconds integer NOT NULL DEFAULT 1 CHECK (spread_seconds BETWEEN 1 AND 900);

-- The claim's fair scan: per campaign, its due batches in due order.
CREATE INDEX batches_campaign_due ON batches (campaign_id, due_at) WHERE state IN ('pending', 'claimed');
