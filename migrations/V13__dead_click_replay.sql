-- Dead clicks can be replayed: a person (through the API) gives a dead or partially failed batch's dead clicks
-- another chance, without sending its delivered clicks again.
--
-- A replay appends a 'replayed' row after each dead click's last one (delivery_results stays append-only: a
-- click is dead while it has more 'dead' rows than 'replayed' ones), gives the day ledger and the campaign's
-- counters back what those clicks had reserved, and returns the batch to 'pending'. The batch remembers how many
-- of its clicks were delivered and counted before (settled_clicks): the next claim reserves only the others, and
-- the pass that ends the batch again counts only what it delivered since.
ALTER TABLE delivery_results DROP CONSTRAINT delivery_results_outcome_check;
ALTER TABLE delivery_results ADD CONSTRAINT delivery_results_outcome_check
    CHECK (outcome IN ('delivered', 'retrying', 'failed', 'dead', 'skipped', 'replayed'));

ALTER TABLE batches
    ADD COLUMN settled_clicks integer NOT NULL DEFAULT 0 CHECK (settled_clicks >= 0),
    ADD CONSTRAINT batches_settled_check CHECK (settled_clicks < click_count);
