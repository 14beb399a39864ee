//! Reading click files: object keys, file formats and compression, header mapping and row validation. Pure: the
//! slicer feeds it bytes and campaign facts; it answers with clicks to store or precise reasons to reject.

pub mod columns;
pub mod format;
pub mod key;
pub mod limits;
pub mod mapping;
pub mod rejects;
pub mod row;
pub mod schedule;

pub use columns::{Columns, Field, FileError, KnownField};
pub use format::{Compression, FileFormat};
pub use key::{UploadKey, campaign_from_key, decode_event_key, encode_event_key};
pub use limits::IngestLimits;
pub use mapping::{Delimiter, IngestMapping, TimestampZone};
pub use rejects::{RejectReason, RejectedRow};
pub use row::{
    CampaignDirectory, CampaignFacts, ClickRow, RowContext, validate_csv_record, validate_json_line,
    validate_json_object,
};
