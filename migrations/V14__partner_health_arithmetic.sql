-- A partner's allowance is changed by arithmetic in one statement (each bridge pass multiplies and adds what it
-- observed to the row as it is), and recovers for the time since it last changed: its own instant, since
-- updated_at also moves with every send-slot reservation, which is no news about the partner's health.
ALTER TABLE partner_health ADD COLUMN allowance_changed_at timestamptz NOT NULL DEFAULT now();
UPDATE partner_health SET allowance_changed_at = updated_at;
