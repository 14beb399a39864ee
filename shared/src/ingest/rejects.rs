//! Rejected rows and the rejects report.

/// Why one row was not taken. The message is what the data team reads in the rejects report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("missing click_id")]
    MissingClickId,
    #[error("invalid click_id: {0}")]
    InvalidClickId(&'static str),
    #[error("missing campaign_id (the key does not name a campaign: use incoming/<campaign_id>/...)")]
    MissingCampaign,
    #[error("invalid campaign_id {0:?}")]
    InvalidCampaign(String),
    #[error("unknown campaign {0:?}")]
    UnknownCampaign(String),
    #[error("campaign {0:?} is archived")]
    ArchivedCampaign(String),
    #[error("campaign {campaign:?} cannot take clicks until its configuration is fixed: {reason}")]
    UnusableCampaign { campaign: String, reason: String },
    #[error("campaign_id {row:?} differs from the campaign {key:?} named by the upload's key")]
    CampaignMismatch { row: String, key: String },
    #[error("missing clicked_at")]
    MissingClickedAt,
    #[error(
        "unparseable clicked_at {0:?}: use RFC 3339, epoch seconds or milliseconds, or YYYY-MM-DD HH:MM:SS[.fff] \
         (read in the campaign's ingest.timestamp_zone, UTC by default)"
    )]
    InvalidClickedAt(String),
    #[error("invalid ip {0:?}")]
    InvalidIp(String),
    #[error("invalid landing_url: {0}")]
    InvalidLandingUrl(String),
    #[error("{field} is longer than {max} bytes")]
    FieldTooLong { field: String, max: usize },
    #[error("wrong column count: expected {expected}, found {found}")]
    WrongColumnCount { expected: usize, found: usize },
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("row is longer than {0} bytes")]
    RowTooLong(usize),
    #[error("reading stopped here: {0}")]
    LimitReached(String),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("not a JSON object: each row must be one")]
    NotAnObject,
    #[error("{0} must be a string or a number")]
    NotAScalar(String),
    #[error("every column the click id is derived from is empty")]
    NothingToDeriveClickIdFrom,
}

impl RejectReason {
    /// A stable name for the kind of reason, for counts per reason (the message may carry the row's values).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingClickId => "missing_click_id",
            Self::InvalidClickId(_) => "invalid_click_id",
            Self::MissingCampaign => "missing_campaign",
            Self::InvalidCampaign(_) => "invalid_campaign",
            Self::UnknownCampaign(_) => "unknown_campaign",
            Self::ArchivedCampaign(_) => "archived_campaign",
            Self::UnusableCampaign { .. } => "unusable_campaign",
            Self::CampaignMismatch { .. } => "campaign_mismatch",
            Self::MissingClickedAt => "missing_clicked_at",
            Self::InvalidClickedAt(_) => "invalid_clicked_at",
            Self::InvalidIp(_) => "invalid_ip",
            Self::InvalidLandingUrl(_) => "invalid_landing_url",
            Self::FieldTooLong { .. } => "field_too_long",
            Self::WrongColumnCount { .. } => "wrong_column_count",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::RowTooLong(_) => "row_too_long",
            Self::LimitReached(_) => "limit_reached",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::NotAScalar(_) => "not_a_scalar",
            Self::NothingToDeriveClickIdFrom => "nothing_to_derive_click_id_from",
        }
    }

    /// The field that failed, when one did.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::MissingClickId | Self::InvalidClickId(_) | Self::NothingToDeriveClickIdFrom => Some("click_id"),
            Self::MissingCampaign
            | Self::InvalidCampaign(_)
            | Self::UnknownCampaign(_)
            | Self::ArchivedCampaign(_)
            | Self::UnusableCampaign { .. }
            | Self::CampaignMismatch { .. } => Some("campaign_id"),
            Self::MissingClickedAt | Self::InvalidClickedAt(_) => Some("clicked_at"),
            Self::InvalidIp(_) => Some("ip"),
            Self::InvalidLandingUrl(_) => Some("landing_url"),
            Self::FieldTooLong { field, .. } | Self::NotAScalar(field) => Some(field),
            Self::WrongColumnCount { .. }
            | Self::InvalidUtf8
            | Self::RowTooLong(_)
            | Self::LimitReached(_)
            | Self::InvalidJson(_)
            | Self::NotAnObject => None,
        }
    }
}

/// One rejected row: its 1-based data row number (header excluded), the reason and the raw row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub row_number: u64,
    pub reason: RejectReason,
    /// The row as read (lossily decoded, cut to [`MAX_RAW_REPORTED`] bytes).
    pub raw: String,
}

/// How much of a rejected row the report repeats.
pub const MAX_RAW_REPORTED: usize = 2048;

/// Cuts a raw row for the report, on a character boundary.
pub fn truncate_raw(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.len() <= MAX_RAW_REPORTED {
        return text.into_owned();
    }
    let mut end = MAX_RAW_REPORTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A cell that spreadsheet programs would run as a formula (`=`, `+`, `-`, `@`, tab, CR) gets a leading `'`
/// (OWASP's advice on CSV injection): the report is opened by people in Excel and Sheets.
pub fn neutralise_formula(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_owned(),
    }
}

/// The header of the rejects report.
pub const REPORT_HEADER: [&str; 4] = ["row", "reason", "field", "raw"];

/// One report line's cells, made safe.
pub fn report_cells(row_number: u64, reason: &str, field: &str, raw: &str) -> [String; 4] {
    [row_number.to_string(), neutralise_formula(reason), neutralise_formula(field), neutralise_formula(raw)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised() {
        for dangerous in ["=HYPERLINK(\"x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert!(neutralise_formula(dangerous).starts_with('\''), "{dangerous:?}");
        }
        assert_eq!(neutralise_formula("c-1,2"), "c-1,2");
    }

    #[test]
    fn raw_rows_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_RAW_REPORTED);
        let cut = truncate_raw(long.as_bytes());
        assert!(cut.len() <= MAX_RAW_REPORTED && cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_raw(b"a\xffb"), "a\u{fffd}b");
    }
}
