-- Rejected rows of an upload, written in the same transaction as the chunk they came from, so a resumed upload
-- reports every rejected row exactly once; the rejects report in S3 is written from here when the upload ends.
CREATE TABLE upload_rejects (
    upload_id   bigint NOT NULL REFERENCES uploads ON DELETE CASCADE,
    row_number  bigint NOT NULL CHECK (row_number > 0),
    reason      text NOT NULL,
    raw         text NOT NULL,
    PRIMARY KEY (upload_id, row_number)
);
