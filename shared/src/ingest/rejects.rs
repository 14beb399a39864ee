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
    #[error("unparseable clicked_at {0:?}: use RFC 3339 or epoch seconds or milliseconds")]
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
    #[error("a JSON line must be an object")]
    NotAnObject,
    #[error("{0} must be a string or a number")]
    NotAScalar(String),
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
pub const REPORT_HEADER: [&str; 3] = ["row", "reason", "raw"];

/// One report line's cells, made safe.
pub fn report_cells(row_number: u64, reason: &str, raw: &str) -> [String; 3] {
    [row_number.to_string(), neutralise_formula(reason), neutralise_formula(raw)]
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
