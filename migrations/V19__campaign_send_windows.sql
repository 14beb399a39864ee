-- A campaign's send stream also counts the slots it granted in the current UTC minute and hour
-- (shared/src/delivery/pace.rs, `CampaignStream`), so per-minute and per-hour limits hold at the partner as the
-- pacer's window counters hold them at release.
ALTER TABLE campaign_send_pace
    ADD COLUMN minute_start timestamptz,
    ADD COLUMN minute_sends integer NOT NULL DEFAULT 0,
    ADD COLUMN hour_start   timestamptz,
    ADD COLUMN hour_sends   integer NOT NULL DEFAULT 0;
