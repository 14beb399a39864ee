-- `click_ids` is the uniqueness guard the slicer writes beside every click, and its primary-key B-tree compares
-- keys on every insert. Under a linguistic collation (en_US.UTF-8, C.UTF-8 on glibc) each comparison goes
-- through strcoll; under "C" it is memcmp. Equality is the same under both (the collations are deterministic),
-- and nothing orders click ids, so the key columns use "C". Queries comparing these columns with text of the
-- default collation name the collation: `k.click_id = x.click_id COLLATE "C"`.
ALTER TABLE click_ids
    ALTER COLUMN campaign_id TYPE text COLLATE "C",
    ALTER COLUMN click_id TYPE text COLLATE "C";
