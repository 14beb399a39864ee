//! Validating one row into a click, or a precise reason to reject it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, TimeZone, Utc};

use super::columns::{Columns, Field, FileError, KnownField};
use super::rejects::{RejectReason, RejectedRow, truncate_raw};
use crate::domain::{CampaignId, CampaignStatus, ClickId};

/// The two formats a click file may have (either may be gzip-compressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl FileFormat {
    /// The format a key's extension names (after any `.gz`), if it names one.
    pub fn from_key(key: &str) -> Option<Self> {
        let lower = key.to_ascii_lowercase();
        let name = lower.strip_suffix(".gz").unwrap_or(&lower);
        if name.ends_with(".csv") {
            Some(Self::Csv)
        } else if name.ends_with(".ndjson") || name.ends_with(".jsonl") || name.ends_with(".json") {
            Some(Self::Ndjson)
        } else {
            None
        }
    }

    /// Decides from the first bytes when the key does not say: NDJSON starts with `{`, CSV with a printable
    /// header. Anything else (binary, another text format) is refused with a clear reason.
    pub fn sniff(head: &[u8]) -> Result<Self, FileError> {
        let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
        let first = text.iter().copied().find(|b| !b.is_ascii_whitespace()).ok_or(FileError::Empty)?;
        if first == b'{' {
            return Ok(Self::Ndjson);
        }
        let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
        match std::str::from_utf8(line) {
            Ok(l) if l.chars().all(|c| !c.is_control() || c == '\r' || c == '\t') => Ok(Self::Csv),
            _ => Err(FileError::UnknownFormat("the first line is not text".into())),
        }
    }
}

/// Whether the object is gzip: by key, by Content-Encoding, or by its magic bytes.
pub fn is_gzip(key: &str, content_encoding: Option<&str>, head: &[u8]) -> bool {
    key.to_ascii_lowercase().ends_with(".gz")
        || content_encoding.is_some_and(|e| e.eq_ignore_ascii_case("gzip"))
        || head.starts_with(&[0x1f, 0x8b])
}

/// What the validator must know about campaigns.
pub trait CampaignFacts {
    fn status(&self, campaign_id: &CampaignId) -> Option<CampaignStatus>;

    /// Why a campaign that exists cannot take clicks now (its stored configuration cannot be used).
    fn unusable(&self, _campaign_id: &CampaignId) -> Option<&str> {
        None
    }
}

impl CampaignFacts for HashMap<CampaignId, CampaignStatus> {
    fn status(&self, campaign_id: &CampaignId) -> Option<CampaignStatus> {
        self.get(campaign_id).copied()
    }
}

/// The campaigns an upload may name: each usable one's status, and for each whose stored configuration cannot
/// be loaded, the reason (its rows are rejected with it; every other campaign's rows go on).
#[derive(Debug, Clone, Default)]
pub struct CampaignDirectory {
    pub statuses: HashMap<CampaignId, CampaignStatus>,
    pub unusable: HashMap<CampaignId, String>,
}

impl CampaignFacts for CampaignDirectory {
    fn status(&self, campaign_id: &CampaignId) -> Option<CampaignStatus> {
        self.statuses.get(campaign_id).copied()
    }

    fn unusable(&self, campaign_id: &CampaignId) -> Option<&str> {
        self.unusable.get(campaign_id).map(String::as_str)
    }
}

/// A valid click, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickRow {
    pub campaign_id: CampaignId,
    pub click_id: ClickId,
    pub row_number: u64,
    pub clicked_at: DateTime<Utc>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub landing_url: Option<String>,
    pub sub_id: Option<String>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Context shared by every row of one upload.
pub struct RowContext<'a> {
    /// The campaign named by the key (`incoming/<campaign_id>/...`), if any.
    pub key_campaign: Option<&'a CampaignId>,
    pub campaigns: &'a dyn CampaignFacts,
    /// Longest accepted row (raw bytes); longer rows are rejected without being parsed.
    pub max_row_bytes: usize,
}

/// Validates one CSV record against the header.
pub fn validate_csv_record(
    columns: &Columns,
    record: &csv::ByteRecord,
    row_number: u64,
    ctx: &RowContext<'_>,
) -> Result<ClickRow, RejectedRow> {
    let reject = |reason| RejectedRow { row_number, reason, raw: truncate_raw(&raw_csv(record)) };
    if record.as_slice().len() > ctx.max_row_bytes {
        return Err(reject(RejectReason::RowTooLong(ctx.max_row_bytes)));
    }
    if record.len() != columns.fields.len() {
        return Err(reject(RejectReason::WrongColumnCount { expected: columns.fields.len(), found: record.len() }));
    }
    let mut values = Vec::with_capacity(record.len());
    for (field, bytes) in columns.fields.iter().zip(record.iter()) {
        let text = std::str::from_utf8(bytes).map_err(|_| reject(RejectReason::InvalidUtf8))?;
        values.push((field, Cow::Borrowed(text)));
    }
    build(values, row_number, ctx).map_err(reject)
}

/// Validates one NDJSON line.
pub fn validate_json_line(line: &[u8], row_number: u64, ctx: &RowContext<'_>) -> Result<ClickRow, RejectedRow> {
    let reject = |reason| RejectedRow { row_number, reason, raw: truncate_raw(line) };
    if line.len() > ctx.max_row_bytes {
        return Err(reject(RejectReason::RowTooLong(ctx.max_row_bytes)));
    }
    let text = std::str::from_utf8(line).map_err(|_| reject(RejectReason::InvalidUtf8))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| reject(RejectReason::InvalidJson(e.to_string())))?;
    let serde_json::Value::Object(object) = value else { return Err(reject(RejectReason::NotAnObject)) };
    let fields: Vec<(Field, &serde_json::Value)> = object.iter().map(|(k, v)| (Field::from_name(k), v)).collect();
    let mut values = Vec::with_capacity(fields.len());
    for (field, value) in &fields {
        let text = match value {
            serde_json::Value::String(s) => Cow::Borrowed(s.as_str()),
            serde_json::Value::Number(n) => Cow::Owned(n.to_string()),
            serde_json::Value::Null => continue,
            _ => {
                let name = match field {
                    Field::Known(k) => k.name().to_owned(),
                    Field::Attribute(a) => a.clone(),
                };
                return Err(reject(RejectReason::NotAScalar(name)));
            }
        };
        values.push((field, text));
    }
    build(values, row_number, ctx).map_err(reject)
}

fn build(values: Vec<(&Field, Cow<'_, str>)>, row_number: u64, ctx: &RowContext<'_>) -> Result<ClickRow, RejectReason> {
    let mut known: [Option<&str>; 7] = [None; 7];
    let mut attributes = serde_json::Map::new();
    for (field, value) in &values {
        let value = value.trim();
        match field {
            Field::Known(k) => {
                if value.len() > k.max_len() {
                    return Err(RejectReason::FieldTooLong { field: k.name().into(), max: k.max_len() });
                }
                if !value.is_empty() {
                    known[*k as usize] = Some(value);
                }
            }
            Field::Attribute(name) => {
                if value.len() > MAX_ATTRIBUTE_BYTES {
                    return Err(RejectReason::FieldTooLong { field: name.clone(), max: MAX_ATTRIBUTE_BYTES });
                }
                if !value.is_empty() {
                    attributes.insert(name.clone(), serde_json::Value::String(value.to_owned()));
                }
            }
        }
    }
    let get = |k: KnownField| known[k as usize];

    let click_id = ClickId::parse(get(KnownField::ClickId).ok_or(RejectReason::MissingClickId)?)
        .map_err(|e| RejectReason::InvalidClickId(e.reason))?;

    let campaign_id = match (get(KnownField::CampaignId), ctx.key_campaign) {
        (Some(row), Some(key)) if row != key.as_str() => {
            return Err(RejectReason::CampaignMismatch { row: row.into(), key: key.to_string() });
        }
        (_, Some(key)) => key.clone(),
        (Some(row), None) => CampaignId::parse(row).map_err(|_| RejectReason::InvalidCampaign(row.into()))?,
        (None, None) => return Err(RejectReason::MissingCampaign),
    };
    if let Some(reason) = ctx.campaigns.unusable(&campaign_id) {
        return Err(RejectReason::UnusableCampaign { campaign: campaign_id.to_string(), reason: reason.to_owned() });
    }
    match ctx.campaigns.status(&campaign_id) {
        None => return Err(RejectReason::UnknownCampaign(campaign_id.to_string())),
        Some(CampaignStatus::Archived) => return Err(RejectReason::ArchivedCampaign(campaign_id.to_string())),
        Some(_) => {}
    }

    let clicked_at = parse_clicked_at(get(KnownField::ClickedAt).ok_or(RejectReason::MissingClickedAt)?)?;
    let ip =
        get(KnownField::Ip).map(|v| v.parse::<IpAddr>().map_err(|_| RejectReason::InvalidIp(v.into()))).transpose()?;
    let landing_url = get(KnownField::LandingUrl)
        .map(|v| match url::Url::parse(v) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(v.to_owned()),
            Ok(u) => Err(RejectReason::InvalidLandingUrl(format!("scheme {:?} is not http or https", u.scheme()))),
            Err(e) => Err(RejectReason::InvalidLandingUrl(e.to_string())),
        })
        .transpose()?;

    Ok(ClickRow {
        campaign_id,
        click_id,
        row_number,
        clicked_at,
        ip,
        user_agent: get(KnownField::UserAgent).map(str::to_owned),
        landing_url,
        sub_id: get(KnownField::SubId).map(str::to_owned),
        attributes,
    })
}

/// Longest accepted attribute value in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// RFC 3339 (`2026-11-28T10:00:00Z`, offset or `Z`; a space instead of `T` is accepted), or epoch seconds
/// (optionally fractional) or milliseconds (13+ digits). Times outside 2000..2100 are refused as typos.
pub fn parse_clicked_at(value: &str) -> Result<DateTime<Utc>, RejectReason> {
    let invalid = || RejectReason::InvalidClickedAt(value.to_owned());
    let parsed = if value.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = value.parse().map_err(|_| invalid())?;
        if value.len() >= 13 { Utc.timestamp_millis_opt(n).single() } else { Utc.timestamp_opt(n, 0).single() }
    } else if let Some((secs, frac)) = value.split_once('.').filter(|(s, f)| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit())
    }) {
        let secs: i64 = secs.parse().map_err(|_| invalid())?;
        let nanos: u32 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().map_err(|_| invalid())?;
        Utc.timestamp_opt(secs, nanos).single()
    } else {
        DateTime::parse_from_rfc3339(value).ok().map(|t| t.with_timezone(&Utc))
    };
    let at = parsed.ok_or_else(invalid)?;
    let (min, max) = (Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0), Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0));
    if min.single().is_some_and(|m| at < m) || max.single().is_some_and(|m| at >= m) {
        return Err(invalid());
    }
    Ok(at)
}

fn raw_csv(record: &csv::ByteRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.as_slice().len() + record.len());
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaigns() -> HashMap<CampaignId, CampaignStatus> {
        HashMap::from([
            (CampaignId::parse("spring").unwrap(), CampaignStatus::Active),
            (CampaignId::parse("old").unwrap(), CampaignStatus::Archived),
        ])
    }

    fn csv_row(header: &[&str], cells: &[&[u8]], key_campaign: Option<&CampaignId>) -> Result<ClickRow, RejectReason> {
        let columns = Columns::from_header(header).unwrap();
        let facts = campaigns();
        let ctx = RowContext { key_campaign, campaigns: &facts, max_row_bytes: 64 * 1024 };
        validate_csv_record(&columns, &csv::ByteRecord::from(cells.to_vec()), 7, &ctx).map_err(|r| r.reason)
    }

    const HEADER: [&str; 5] = ["click_id", "campaign_id", "clicked_at", "ip", "country"];

    #[test]
    fn a_good_row_becomes_a_click() {
        let row = csv_row(&HEADER, &[b"c1", b"spring", b"1764324000", b"10.0.0.1", b"DE"], None).unwrap();
        assert_eq!(row.click_id.as_str(), "c1");
        assert_eq!(row.clicked_at.to_rfc3339(), "2025-11-28T10:00:00+00:00");
        assert_eq!(row.attributes["country"], "DE");
        assert_eq!(row.row_number, 7);
    }

    #[test]
    fn each_bad_row_gets_its_reason() {
        let cases: Vec<(&[&[u8]], RejectReason)> = vec![
            (&[b"", b"spring", b"1764324000", b"", b""], RejectReason::MissingClickId),
            (&[b"c1", b"nope", b"1764324000", b"", b""], RejectReason::UnknownCampaign("nope".into())),
            (&[b"c1", b"old", b"1764324000", b"", b""], RejectReason::ArchivedCampaign("old".into())),
            (&[b"c1", b"spring", b"yesterday", b"", b""], RejectReason::InvalidClickedAt("yesterday".into())),
            (&[b"c1", b"spring", b"", b"", b""], RejectReason::MissingClickedAt),
            (&[b"c1", b"spring", b"1764324000", b"300.1.1.1", b""], RejectReason::InvalidIp("300.1.1.1".into())),
            (&[b"c1", b"spring", b"1764324000"], RejectReason::WrongColumnCount { expected: 5, found: 3 }),
            (&[b"c\xff1", b"spring", b"1764324000", b"", b""], RejectReason::InvalidUtf8),
        ];
        for (cells, reason) in cases {
            assert_eq!(csv_row(&HEADER, cells, None).unwrap_err(), reason);
        }
        let long = "c".repeat(257);
        assert_eq!(
            csv_row(&HEADER, &[long.as_bytes(), b"spring", b"1764324000", b"", b""], None).unwrap_err(),
            RejectReason::FieldTooLong { field: "click_id".into(), max: 256 }
        );
    }

    #[test]
    fn the_key_names_the_campaign() {
        let spring = CampaignId::parse("spring").unwrap();
        let row = csv_row(&["click_id", "ts"], &[b"c1", b"2026-11-28T10:00:00+01:00"], Some(&spring)).unwrap();
        assert_eq!(row.campaign_id, spring);
        assert_eq!(
            csv_row(&["click_id", "campaign", "ts"], &[b"c1", b"other", b"1764324000"], Some(&spring)).unwrap_err(),
            RejectReason::CampaignMismatch { row: "other".into(), key: "spring".into() }
        );
        assert_eq!(
            csv_row(&["click_id", "ts"], &[b"c1", b"1764324000"], None).unwrap_err(),
            RejectReason::MissingCampaign
        );
    }

    #[test]
    fn json_lines_validate_the_same_way() {
        let facts = campaigns();
        let ctx = RowContext { key_campaign: None, campaigns: &facts, max_row_bytes: 64 * 1024 };
        let line = br#"{"click_id":"c1","campaign":"spring","clicked_at":1764324000123,"url":"https://x.example/a","tier":"gold"}"#;
        let row = validate_json_line(line, 1, &ctx).unwrap();
        assert_eq!(row.clicked_at.timestamp_millis(), 1_764_324_000_123);
        assert_eq!(row.landing_url.as_deref(), Some("https://x.example/a"));
        assert_eq!(row.attributes["tier"], "gold");
        assert_eq!(validate_json_line(b"[1]", 2, &ctx).unwrap_err().reason, RejectReason::NotAnObject);
        assert!(matches!(validate_json_line(b"{nope", 3, &ctx).unwrap_err().reason, RejectReason::InvalidJson(_)));
        let nested = br#"{"click_id":{"a":1},"campaign_id":"spring","clicked_at":1}"#;
        assert_eq!(
            validate_json_line(nested, 4, &ctx).unwrap_err().reason,
            RejectReason::NotAScalar("click_id".into())
        );
    }

    #[test]
    fn clicked_at_formats() {
        assert_eq!(parse_clicked_at("1764324000.5").unwrap().timestamp_millis(), 1_764_324_000_500);
        assert_eq!(parse_clicked_at("2026-11-28 10:00:00Z").unwrap().to_rfc3339(), "2026-11-28T10:00:00+00:00");
        assert!(parse_clicked_at("99").is_err(), "1970 is a typo, not a click time");
        assert!(parse_clicked_at("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn formats_are_detected() {
        assert_eq!(FileFormat::from_key("incoming/c/a.CSV.gz"), Some(FileFormat::Csv));
        assert_eq!(FileFormat::from_key("incoming/c/a.jsonl"), Some(FileFormat::Ndjson));
        assert_eq!(FileFormat::from_key("incoming/c/a.parquet"), None);
        assert_eq!(FileFormat::sniff(b"\n {\"click_id\":1}").unwrap(), FileFormat::Ndjson);
        assert_eq!(FileFormat::sniff(b"click_id,ts\n").unwrap(), FileFormat::Csv);
        assert!(matches!(FileFormat::sniff(b"PAR1\x00\x01\x02"), Err(FileError::UnknownFormat(_))));
        assert!(is_gzip("a.csv", None, &[0x1f, 0x8b, 8]));
    }
}
