-- One outbox row per delivery pass instead of one per event: a pass of 100 clicks queued 200-300 rows of JSON,
-- each inserted, read and deleted again, which cost more than recording the deliveries. A row now holds a
-- JSON array of ClickEvents (rows queued before this migration hold one event as an object; both are read).
ALTER TABLE event_outbox DROP CONSTRAINT event_outbox_event_check;
ALTER TABLE event_outbox ADD CONSTRAINT event_outbox_event_check
    CHECK (jsonb_typeof(event) = 'object' OR (jsonb_typeof(event) = 'array' AND jsonb_array_length(event) > 0));
