-- Delivery statistics per campaign (and the partner it delivered to) per UTC minute and per UTC hour, added to in
-- the same transactions that record outcomes (the pacer's claim for released clicks, the bridge's pass for
-- attempts), so a month of statistics reads a few hundred bucket rows, never the clicks. The latency histogram's
-- buckets are `clickpacer::stats::BOUNDS_MS` (49 counts); rows of either table have the same shape.
CREATE FUNCTION latency_hist_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE ARRAY(SELECT COALESCE(x, 0) + COALESCE(y, 0) FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i) ORDER BY i)
    END
$$;

CREATE TABLE delivery_stats_minute (
    campaign_id    text NOT NULL,
    bucket         timestamptz NOT NULL CHECK (extract(epoch FROM bucket)::bigint % 60 = 0),
    partner_id     text NOT NULL,
    released       bigint NOT NULL DEFAULT 0 CHECK (released >= 0),
    delivered      bigint NOT NULL DEFAULT 0 CHECK (delivered >= 0),
    failed         bigint NOT NULL DEFAULT 0 CHECK (failed >= 0),
    throttled      bigint NOT NULL DEFAULT 0 CHECK (throttled >= 0 AND throttled <= failed),
    dead           bigint NOT NULL DEFAULT 0 CHECK (dead >= 0 AND dead <= failed),
    spend_micros   bigint NOT NULL DEFAULT 0 CHECK (spend_micros >= 0),
    latency_sum_ms bigint NOT NULL DEFAULT 0 CHECK (latency_sum_ms >= 0),
    latency_hist   integer[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (campaign_id, bucket, partner_id)
);
CREATE INDEX delivery_stats_minute_partner ON delivery_stats_minute (partner_id, bucket);

CREATE TABLE delivery_stats_hour (LIKE delivery_stats_minute INCLUDING DEFAULTS);
ALTER TABLE delivery_stats_hour
    ADD PRIMARY KEY (campaign_id, bucket, partner_id),
    ADD CHECK (extract(epoch FROM bucket)::bigint % 3600 = 0),
    ADD CHECK (released >= 0 AND delivered >= 0 AND failed >= 0 AND throttled >= 0 AND throttled <= failed AND dead >= 0
               AND dead <= failed AND spend_micros >= 0 AND latency_sum_ms >= 0);
CREATE INDEX delivery_stats_hour_partner ON delivery_stats_hour (partner_id, bucket);
