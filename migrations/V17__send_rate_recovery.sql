-- The rate blind cuts of a 429 outage started from (shared/src/delivery/pace.rs, "Recovery"): the bridge regains
-- it quickly once the partner answers again; NULL when there is nothing to regain.
ALTER TABLE partner_health
    ADD COLUMN send_rate_recover_to double precision CHECK (send_rate_recover_to > 0);
