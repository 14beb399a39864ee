-- Click-queue messages the bridge cannot read, kept with the reason (for people to look at), instead of being
-- sent to the dead-letter queue: that queue then holds only SQS's own redrives, release messages that can be
-- moved back to the click queue as they are. Dead clicks are in delivery_results (outcome 'dead', the last
-- error) and the event log's failure index.
CREATE TABLE unreadable_messages (
    unreadable_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id     text,
    body           text NOT NULL,
    reason         text NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
