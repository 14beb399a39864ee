-- Every change made through the management API: who (the token's subject), when, what, and the entity before
-- and after (partners without their secrets). Written in the change's own transaction, so no change goes
-- unrecorded and no record claims a change that did not happen.
CREATE TABLE audit_log (
    audit_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL CHECK (length(actor) BETWEEN 1 AND 256),
    entity     text NOT NULL CHECK (entity IN ('campaign', 'partner')),
    entity_id  text NOT NULL,
    action     text NOT NULL CHECK (length(action) BETWEEN 1 AND 64),
    before     jsonb,
    after      jsonb
);
CREATE INDEX audit_log_entity ON audit_log (entity, entity_id, audit_id);
