-- Rate-window counters for every window still ahead, not only the last one a run touched: a run plans a minute
-- of one-second slots, and an overlapping run (another pacer holding other campaigns of the same partner, or the
-- next run) must see each of those seconds. Each is a JSON array of [window start, clicks released] pairs,
-- ordered by start; the pacer drops windows that ended when it writes them back.
ALTER TABLE campaign_pacing
    ADD COLUMN second_windows jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(second_windows) = 'array'),
    ADD COLUMN minute_windows jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(minute_windows) = 'array'),
    ADD COLUMN hour_windows   jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(hour_windows) = 'array');
UPDATE campaign_pacing SET
    second_windows = jsonb_build_array(jsonb_build_array(second_start, second_released)),
    minute_windows = jsonb_build_array(jsonb_build_array(minute_start, minute_released)),
    hour_windows = jsonb_build_array(jsonb_build_array(hour_start, hour_released));
ALTER TABLE campaign_pacing
    DROP COLUMN second_start, DROP COLUMN second_released,
    DROP COLUMN minute_start, DROP COLUMN minute_released,
    DROP COLUMN hour_start, DROP COLUMN hour_released;

ALTER TABLE partner_pacing
    ADD COLUMN second_windows jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(second_windows) = 'array');
UPDATE partner_pacing SET second_windows = jsonb_build_array(jsonb_build_array(second_start, second_released));
ALTER TABLE partner_pacing DROP COLUMN second_start, DROP COLUMN second_released;
