-- ClickPacer's initial schema.
--
-- Shape (see docs/data-model.md): configuration tables (partners, campaigns) are small and edited by people;
-- clicks are written once by the slicer and never updated; batches are the unit of state the pacer and bridge
-- move through their state machine; delivery results and the day ledger are appended / counted.
-- Every rule the database can check is a constraint here, so a bug in any function cannot store a state the
-- design forbids.

-- An IANA zone name is valid when PostgreSQL's own tz database knows it; the same database answers
-- "local day" questions in SQL, so the two can never disagree.
CREATE FUNCTION is_iana_time_zone(zone text) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = zone)
$$;

-- A dayparting curve: 24 finite, non-negative weights (local hour 0 first), not all zero.
CREATE FUNCTION is_hourly_curve(weights double precision[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT array_ndims(weights) = 1
       AND array_length(weights, 1) = 24
       AND NOT EXISTS (SELECT 1 FROM unnest(weights) AS w
                       WHERE w IS NULL OR w < 0 OR w = 'Infinity'::float8 OR w = 'NaN'::float8)
       AND (SELECT sum(w) FROM unnest(weights) AS w) > 0
$$;

CREATE TABLE partners (
    partner_id          text PRIMARY KEY CHECK (partner_id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    enabled             boolean NOT NULL DEFAULT true,
    -- How a click is shaped on the wire: a GET URL template, a JSON body template or a form body.
    delivery_format     text NOT NULL DEFAULT 'get'
                        CHECK (delivery_format IN ('get', 'post_json', 'post_form')),
    endpoint_template   text NOT NULL CHECK (length(endpoint_template) BETWEEN 1 AND 4096),
    body_template       text CHECK (length(body_template) <= 65536),
    headers             jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(headers) = 'object'),
    signing_secret      text CHECK (length(signing_secret) BETWEEN 16 AND 512),
    success_body_match  text CHECK (length(success_body_match) <= 1024),
    timeout_ms          integer NOT NULL DEFAULT 5000 CHECK (timeout_ms BETWEEN 100 AND 60000),
    rate_per_second     integer CHECK (rate_per_second > 0),
    max_concurrency     integer NOT NULL DEFAULT 16 CHECK (max_concurrency BETWEEN 1 AND 1024),
    max_attempts        integer NOT NULL DEFAULT 8 CHECK (max_attempts BETWEEN 1 AND 50),
    retry_base_ms       integer NOT NULL DEFAULT 1000 CHECK (retry_base_ms BETWEEN 10 AND 3600000),
    retry_max_ms        integer NOT NULL DEFAULT 900000 CHECK (retry_max_ms BETWEEN 10 AND 43200000),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (retry_max_ms >= retry_base_ms),
    CHECK (delivery_format = 'get' OR body_template IS NOT NULL OR delivery_format = 'post_form')
);

-- Observed partner health, written by the bridge and read by the pacer. Kept apart from `partners` so the
-- frequent writes never contend with (or bloat) the configuration row.
CREATE TABLE partner_health (
    partner_id            text PRIMARY KEY REFERENCES partners ON DELETE CASCADE,
    -- Fraction of the configured rate the pacer may use now (AIMD: halved on throttling, recovers additively).
    allowance             double precision NOT NULL DEFAULT 1.0 CHECK (allowance > 0 AND allowance <= 1),
    -- No request to this partner before this instant (Retry-After).
    retry_after_until     timestamptz,
    consecutive_failures  integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    campaign_id           text PRIMARY KEY CHECK (campaign_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    partner_id            text NOT NULL REFERENCES partners,
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'archived')),
    time_zone             text NOT NULL DEFAULT 'UTC' CHECK (is_iana_time_zone(time_zone)),
    flight_start          timestamptz,
    flight_end            timestamptz,
    pacing_mode           text NOT NULL DEFAULT 'asap' CHECK (pacing_mode IN ('asap', 'even', 'hourly_curve')),
    -- 24 non-negative weights, local hour 0 first; zero weight means "do not deliver in this hour" (dayparting).
    hourly_weights        double precision[],
    max_per_second        integer CHECK (max_per_second > 0),
    max_per_minute        integer CHECK (max_per_minute > 0),
    max_per_hour          integer CHECK (max_per_hour > 0),
    daily_cap             bigint CHECK (daily_cap >= 0),
    -- Money is integer micros of the account currency (as ad platforms do): no rounding drift in sums.
    cost_per_click_micros bigint NOT NULL DEFAULT 0 CHECK (cost_per_click_micros >= 0),
    daily_budget_micros   bigint CHECK (daily_budget_micros >= 0),
    total_budget_micros   bigint CHECK (total_budget_micros >= 0),
    batch_size            integer NOT NULL DEFAULT 100 CHECK (batch_size BETWEEN 1 AND 10000),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (flight_end IS NULL OR flight_start IS NULL OR flight_end > flight_start),
    CHECK (hourly_weights IS NULL OR is_hourly_curve(hourly_weights)),
    CHECK (pacing_mode <> 'hourly_curve' OR hourly_weights IS NOT NULL)
);
CREATE INDEX campaigns_partner ON campaigns (partner_id);

-- One row per object version the slicer has seen: (bucket, key, version) is the idempotency key of ingestion.
CREATE TABLE uploads (
    upload_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket            text NOT NULL,
    object_key        text NOT NULL,
    -- S3 version id when the bucket is versioned, otherwise the ETag.
    object_version    text NOT NULL,
    object_size       bigint CHECK (object_size >= 0),
    status            text NOT NULL DEFAULT 'processing' CHECK (status IN ('processing', 'completed', 'failed')),
    status_detail     text,
    -- The slicer's lease: a concurrent or late duplicate invocation leaves a leased upload alone.
    lease_owner       uuid,
    lease_expires_at  timestamptz,
    -- Checkpoint: rows (data rows, header excluded) already committed; a retry resumes after them.
    rows_done         bigint NOT NULL DEFAULT 0 CHECK (rows_done >= 0),
    accepted_rows     bigint NOT NULL DEFAULT 0 CHECK (accepted_rows >= 0),
    rejected_rows     bigint NOT NULL DEFAULT 0 CHECK (rejected_rows >= 0),
    duplicate_rows    bigint NOT NULL DEFAULT 0 CHECK (duplicate_rows >= 0),
    rejects_key       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    UNIQUE (bucket, object_key, object_version),
    -- Every row read is accounted for exactly once.
    CHECK (accepted_rows + rejected_rows + duplicate_rows = rows_done),
    CHECK ((status = 'processing') = (completed_at IS NULL))
);

-- Batches: the unit of state. The claimed set stays small (partial index) so the pacer's claim stays fast
-- however many delivered batches pile up.
CREATE TABLE batches (
    batch_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id       text NOT NULL REFERENCES campaigns,
    partner_id        text NOT NULL REFERENCES partners,
    upload_id         bigint NOT NULL REFERENCES uploads,
    -- Position of the batch within its upload and campaign: makes re-slicing idempotent.
    upload_seq        integer NOT NULL CHECK (upload_seq >= 0),
    click_count       integer NOT NULL CHECK (click_count > 0),
    due_at            timestamptz NOT NULL,
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN (
                          'pending', 'claimed', 'queued', 'delivered', 'partially_failed', 'dead', 'cancelled')),
    lease_expires_at  timestamptz,
    -- Fencing value: bumped on every claim, carried in the SQS message; a worker holding an older value is stale.
    fence             bigint NOT NULL DEFAULT 0 CHECK (fence >= 0),
    claim_count       integer NOT NULL DEFAULT 0 CHECK (claim_count >= 0),
    defer_reason      text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    released_at       timestamptz,
    finished_at       timestamptz,
    UNIQUE (upload_id, campaign_id, upload_seq),
    CHECK ((state = 'claimed') = (lease_expires_at IS NOT NULL)),
    CHECK ((state IN ('delivered', 'partially_failed', 'dead', 'cancelled')) = (finished_at IS NOT NULL))
);
CREATE INDEX batches_claimable ON batches (due_at) WHERE state IN ('pending', 'claimed');
CREATE INDEX batches_campaign_state ON batches (campaign_id, state);

-- Click identity per campaign, across every upload and every clicks partition. PostgreSQL cannot enforce a
-- unique key on a partitioned table unless the key contains the partition column, so this narrow table is
-- the database's guarantee that a click id enters a campaign once: its primary key admits one ingestion time
-- per click id, and every click row must reference exactly that (campaign, click id, ingestion time).
CREATE TABLE click_ids (
    campaign_id  text NOT NULL REFERENCES campaigns,
    click_id     text NOT NULL CHECK (length(click_id) BETWEEN 1 AND 256),
    ingested_at  timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, click_id),
    UNIQUE (campaign_id, click_id, ingested_at)
);

-- Clicks: written once with binary COPY, never updated. Partitioned by ingestion month so retention is a
-- DROP of an old partition, not a DELETE.
CREATE TABLE clicks (
    campaign_id  text NOT NULL,
    click_id     text NOT NULL CHECK (length(click_id) BETWEEN 1 AND 256),
    upload_id    bigint NOT NULL,
    row_number   bigint NOT NULL CHECK (row_number > 0),
    batch_id     bigint NOT NULL,
    clicked_at   timestamptz NOT NULL,
    ip           inet,
    user_agent   text,
    landing_url  text,
    sub_id       text,
    attributes   jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, click_id, ingested_at),
    FOREIGN KEY (campaign_id, click_id, ingested_at) REFERENCES click_ids (campaign_id, click_id, ingested_at)
) PARTITION BY RANGE (ingested_at);
CREATE INDEX clicks_batch ON clicks (batch_id);
-- Rows that miss every monthly partition land here rather than fail; ensure_click_partition keeps it empty.
CREATE TABLE clicks_default PARTITION OF clicks DEFAULT;

-- Creates the month's partition of `clicks` holding `at`; idempotent, called by the slicer before it writes.
CREATE FUNCTION ensure_click_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    part_name   text := format('clicks_%s', to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM'));
BEGIN
    IF to_regclass(part_name) IS NULL THEN
        -- Serialise creators: two slicers racing on the first upload of a month must not both CREATE.
        PERFORM pg_advisory_xact_lock(hashtext('ensure_click_partition'));
        IF to_regclass(part_name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF clicks FOR VALUES FROM (%L) TO (%L)',
                           part_name, month_start, month_start + interval '1 month');
        END IF;
    END IF;
    RETURN part_name;
END
$$;

-- Per campaign and local day (in the campaign's time zone): what was released, delivered and spent.
-- The pacer reserves here in the same transaction as its claim, so caps and budgets hold under concurrency.
CREATE TABLE campaign_day_ledger (
    campaign_id        text NOT NULL REFERENCES campaigns,
    local_day          date NOT NULL,
    released_clicks    bigint NOT NULL DEFAULT 0 CHECK (released_clicks >= 0),
    delivered_clicks   bigint NOT NULL DEFAULT 0 CHECK (delivered_clicks >= 0),
    failed_clicks      bigint NOT NULL DEFAULT 0 CHECK (failed_clicks >= 0),
    reserved_micros    bigint NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    spend_micros       bigint NOT NULL DEFAULT 0 CHECK (spend_micros >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, local_day),
    CHECK (delivered_clicks + failed_clicks <= released_clicks),
    CHECK (spend_micros <= reserved_micros)
);

-- One row per delivery attempt outcome, appended by the bridge. Never updated.
CREATE TABLE delivery_results (
    result_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id      bigint NOT NULL REFERENCES batches,
    fence         bigint NOT NULL,
    campaign_id   text NOT NULL,
    click_id      text NOT NULL,
    partner_id    text NOT NULL REFERENCES partners,
    attempt       integer NOT NULL CHECK (attempt >= 1),
    outcome       text NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed', 'dead', 'skipped')),
    http_status   integer CHECK (http_status BETWEEN 100 AND 599),
    latency_ms    integer CHECK (latency_ms >= 0),
    error         text,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
-- The database's last word on "never delivered twice": one confirmed delivery per click.
CREATE UNIQUE INDEX delivery_results_one_delivery ON delivery_results (campaign_id, click_id)
    WHERE outcome = 'delivered';
CREATE INDEX delivery_results_batch ON delivery_results (batch_id);
