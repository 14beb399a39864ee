-- The slicer writes the chunks of one upload on several connections at once, so chunks commit out of order and
-- the checkpoint is no longer a prefix of the file. Each chunk records the rows it covers, in the same
-- transaction as its clicks, batches, rejected rows and the counts on `uploads`: the sum of an upload's chunk
-- sizes is its `rows_done`, and a resumed upload reads past every committed range. The slicer checks that a new
-- chunk overlaps none of the upload's committed chunks after taking the upload's row lock, so ranges are disjoint.
CREATE TABLE upload_chunks (
    upload_id  bigint NOT NULL REFERENCES uploads ON DELETE CASCADE,
    first_row  bigint NOT NULL CHECK (first_row > 0),
    last_row   bigint NOT NULL,
    PRIMARY KEY (upload_id, first_row),
    CHECK (last_row >= first_row)
);

-- Until now the checkpoint was a prefix: an upload's committed rows are rows 1 to rows_done.
INSERT INTO upload_chunks (upload_id, first_row, last_row)
SELECT upload_id, 1, rows_done FROM uploads WHERE rows_done > 0;
