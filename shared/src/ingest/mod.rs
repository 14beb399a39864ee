//! Reading click files: object keys, file formats, header mapping and row validation. Pure: the slicer feeds
//! it bytes and campaign facts; it answers with clicks to store or precise reasons to reject.

pub mod columns;
pub mod key;
pub mod limits;
pub mod rejects;
pub mod row;
pub mod schedule;

pub use columns::{Columns, Field, FileError, KnownField};
pub use key::{UploadKey, campaign_from_key, decode_event_key, encode_event_key};
pub use limits::IngestLimits;
pub use rejects::{RejectReason, RejectedRow};
pub use row::{
    CampaignDirectory, CampaignFacts, ClickRow, FileFormat, RowContext, is_gzip, validate_csv_record,
    validate_json_line,
};
