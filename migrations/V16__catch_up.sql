-- What even and curve pacing do when delivery is behind plan (clickpacer::domain::CatchUp): spread the rest
-- over the remaining plan window (the default), catch up at a bounded pace ('ahead', with its percent), or at
-- once ('asap').
ALTER TABLE campaigns
    ADD COLUMN catch_up text NOT NULL DEFAULT 'spread' CHECK (catch_up IN ('spread', 'ahead', 'asap')),
    ADD COLUMN catch_up_percent integer CHECK (catch_up_percent BETWEEN 100 AND 1000),
    ADD CONSTRAINT campaigns_catch_up_ahead_check CHECK ((catch_up = 'ahead') = (catch_up_percent IS NOT NULL));
