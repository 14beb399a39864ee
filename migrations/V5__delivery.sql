-- Delivery: the bridge's own lease on a batch (one bridge delivers a batch at a time, whatever SQS
-- redelivers), and the transactional outbox of click events for the DynamoDB event log. Events are written in
-- the same transaction as the delivery results they describe and flushed to DynamoDB afterwards, so a throttled
-- or unavailable event log never blocks delivery and catches up later.
ALTER TABLE batches ADD COLUMN delivery_lease_until timestamptz;

CREATE TABLE event_outbox (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The clickpacer::domain::events::ClickEvent, as JSON.
    event        jsonb NOT NULL CHECK (jsonb_typeof(event) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Attempts per click of a batch, and a click's final outcome, are read on every delivery of the batch.
CREATE INDEX delivery_results_click ON delivery_results (campaign_id, click_id);

-- When a retryable failure asked for the click's next attempt, and whether the outcome is ambiguous (the
-- request may have reached the partner: a timeout or a reset after it was written).
ALTER TABLE delivery_results
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN ambiguous boolean NOT NULL DEFAULT false;
