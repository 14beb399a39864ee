-- The slicer writes clicks with binary COPY at close to PostgreSQL's plain COPY rate: a per-row foreign key
-- check from `clicks` to `click_ids` costs more than the COPY itself. `click_ids`' primary key remains the
-- database's guarantee that a click id enters a campaign once: the slicer inserts there in the same transaction
-- as the click row, so a duplicate aborts the chunk.
ALTER TABLE clicks DROP CONSTRAINT clicks_campaign_id_click_id_ingested_at_fkey;
ALTER TABLE click_ids DROP CONSTRAINT click_ids_campaign_id_click_id_ingested_at_key;
