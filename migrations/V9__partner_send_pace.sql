-- Send-time pacing for partners without a configured rate (shared/src/delivery/pace.rs): the rate the bridge
-- has found the partner takes, the next free send slot every bridge reserves from, and the requests the partner
-- accepted in the current and the previous wall-clock second (what a throttle sets the rate to).
ALTER TABLE partner_health
    ADD COLUMN send_rate          double precision CHECK (send_rate > 0),
    ADD COLUMN send_rate_learned  boolean NOT NULL DEFAULT false,
    ADD COLUMN send_rate_grown_at timestamptz,
    ADD COLUMN next_send_at       timestamptz,
    ADD COLUMN accepted_second    timestamptz,
    ADD COLUMN accepted_in_second integer NOT NULL DEFAULT 0 CHECK (accepted_in_second >= 0),
    ADD COLUMN accepted_previous  integer NOT NULL DEFAULT 0 CHECK (accepted_previous >= 0);
