//! Validating one row into a click, or a precise reason to reject it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use super::columns::{Columns, Field, KnownField};
use super::mapping::{IngestMapping, derive_click_id, normalise};
use super::rejects::{RejectReason, RejectedRow, truncate_raw};
use crate::domain::{CampaignId, CampaignStatus, ClickId};

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
    /// The key campaign's mapping (the default when the key names no campaign).
    pub mapping: &'a IngestMapping,
    /// The zone naive timestamps are read in (resolved from the mapping).
    pub naive_zone: Tz,
}

/// A value of a row: text (CSV cells, JSON strings and numbers) or a JSON value kept whole (nested objects and
/// arrays, booleans).
enum Cell<'a> {
    Text(Cow<'a, str>),
    Json(&'a serde_json::Value),
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
        values.push((Cow::Borrowed(field), Cell::Text(Cow::Borrowed(text))));
    }
    let derived = columns.derive_from.as_ref().map(|positions| {
        let texts: Vec<&str> = positions.iter().map(|&i| std::str::from_utf8(&record[i]).unwrap_or_default()).collect();
        derived_id(&texts)
    });
    build(values, derived, row_number, ctx).map_err(reject)
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
    validate_json_object(&object, row_number, ctx).map_err(reject)
}

/// Validates one row given as a JSON object (an NDJSON line, an element of a JSON array, a Parquet row). Nested
/// values and booleans are kept as attributes; the click's own fields must be strings or numbers.
pub fn validate_json_object(
    object: &serde_json::Map<String, serde_json::Value>,
    row_number: u64,
    ctx: &RowContext<'_>,
) -> Result<ClickRow, RejectReason> {
    let mut values = Vec::with_capacity(object.len());
    for (key, value) in object {
        let field = ctx.mapping.field(key);
        let cell = match value {
            serde_json::Value::String(s) => Cell::Text(Cow::Borrowed(s.as_str())),
            serde_json::Value::Number(n) => Cell::Text(Cow::Owned(n.to_string())),
            serde_json::Value::Null => continue,
            other => match field {
                Field::Known(k) => return Err(RejectReason::NotAScalar(k.name().to_owned())),
                Field::Attribute(_) => Cell::Json(other),
            },
        };
        values.push((Cow::Owned(field), cell));
    }
    let derived = ctx.mapping.derives_click_id().then(|| {
        let texts: Vec<String> = ctx
            .mapping
            .derive_click_id_from
            .iter()
            .map(|wanted| {
                let wanted = normalise(wanted);
                match object.iter().find(|(k, _)| normalise(k) == wanted).map(|(_, v)| v) {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }
            })
            .collect();
        derived_id(&texts.iter().map(String::as_str).collect::<Vec<_>>())
    });
    build(values, derived, row_number, ctx)
}

/// The derived click id, or why there is none: every derivation column is empty.
fn derived_id(values: &[&str]) -> Result<String, RejectReason> {
    if values.iter().all(|v| v.trim().is_empty()) {
        return Err(RejectReason::NothingToDeriveClickIdFrom);
    }
    Ok(derive_click_id(values.iter().copied()))
}

fn build(
    values: Vec<(Cow<'_, Field>, Cell<'_>)>,
    derived_click_id: Option<Result<String, RejectReason>>,
    row_number: u64,
    ctx: &RowContext<'_>,
) -> Result<ClickRow, RejectReason> {
    let mut known: [Option<&str>; 7] = [None; 7];
    let mut attributes = serde_json::Map::new();
    for (field, cell) in &values {
        match (field.as_ref(), cell) {
            (Field::Known(k), Cell::Text(value)) => {
                let value = value.trim();
                if value.len() > k.max_len() {
                    return Err(RejectReason::FieldTooLong { field: k.name().into(), max: k.max_len() });
                }
                if !value.is_empty() {
                    known[*k as usize] = Some(value);
                }
            }
            (Field::Known(k), Cell::Json(_)) => return Err(RejectReason::NotAScalar(k.name().to_owned())),
            (Field::Attribute(name), Cell::Text(value)) => {
                let value = value.trim();
                if value.len() > MAX_ATTRIBUTE_BYTES {
                    return Err(RejectReason::FieldTooLong { field: name.clone(), max: MAX_ATTRIBUTE_BYTES });
                }
                if !value.is_empty() {
                    attributes.insert(name.clone(), serde_json::Value::String(value.to_owned()));
                }
            }
            (Field::Attribute(name), Cell::Json(value)) => {
                // Measured as the compact JSON text a template renders.
                if value.to_string().len() > MAX_ATTRIBUTE_BYTES {
                    return Err(RejectReason::FieldTooLong { field: name.clone(), max: MAX_ATTRIBUTE_BYTES });
                }
                attributes.insert(name.clone(), (*value).clone());
            }
        }
    }
    let get = |k: KnownField| known[k as usize];

    let click_id = match derived_click_id {
        Some(derived) => ClickId::parse(derived?).map_err(|e| RejectReason::InvalidClickId(e.reason))?,
        None => ClickId::parse(get(KnownField::ClickId).ok_or(RejectReason::MissingClickId)?)
            .map_err(|e| RejectReason::InvalidClickId(e.reason))?,
    };

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

    let clicked_at =
        parse_clicked_at(get(KnownField::ClickedAt).ok_or(RejectReason::MissingClickedAt)?, ctx.naive_zone)?;
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

/// Longest accepted attribute value in bytes (a nested value: its compact JSON text).
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// When a click happened, from the forms click files use:
/// - RFC 3339 (`2026-11-28T10:00:00Z`, an offset or `Z`; a space instead of `T` is accepted);
/// - epoch seconds (optionally fractional) or milliseconds (13 digits or more);
/// - a naive date-time, `YYYY-MM-DD HH:MM:SS[.fff]` with a space or `T` and no offset (the default of SQL and
///   spreadsheet exports), read in `naive_zone`. A local time that a DST change skips (02:30 on a spring-forward
///   night) is moved forward by the length of the gap (03:30, daylight time), and one that happens twice (01:30
///   on a fall-back night) is the first of the two (daylight time), as PostgreSQL and java.time resolve them.
///
/// Times outside 2000..2100 are refused as typos.
pub fn parse_clicked_at(value: &str, naive_zone: Tz) -> Result<DateTime<Utc>, RejectReason> {
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
    } else if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        Some(t.with_timezone(&Utc))
    } else {
        ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
            .map(|naive| in_zone(naive, naive_zone))
    };
    let at = parsed.ok_or_else(invalid)?;
    let (min, max) = (Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0), Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0));
    if min.single().is_some_and(|m| at < m) || max.single().is_some_and(|m| at >= m) {
        return Err(invalid());
    }
    Ok(at)
}

/// A local date-time in `zone`, DST gaps and overlaps resolved as [`parse_clicked_at`] documents.
fn in_zone(naive: NaiveDateTime, zone: Tz) -> DateTime<Utc> {
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: read with the offset in force before it, which lands as far past the gap's end as the
            // time was past its start.
            let before = zone.offset_from_utc_datetime(&(naive - chrono::TimeDelta::hours(24))).fix();
            (naive - chrono::TimeDelta::seconds(i64::from(before.local_minus_utc()))).and_utc()
        }
    }
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
        let mapping = IngestMapping::default();
        let ctx = context(key_campaign, &facts, &mapping);
        validate_csv_record(&columns, &csv::ByteRecord::from(cells.to_vec()), 7, &ctx).map_err(|r| r.reason)
    }

    fn context<'a>(
        key_campaign: Option<&'a CampaignId>,
        facts: &'a HashMap<CampaignId, CampaignStatus>,
        mapping: &'a IngestMapping,
    ) -> RowContext<'a> {
        RowContext { key_campaign, campaigns: facts, max_row_bytes: 64 * 1024, mapping, naive_zone: Tz::UTC }
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
        let mapping = IngestMapping::default();
        let ctx = context(None, &facts, &mapping);
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
    fn nested_values_are_kept_as_attributes() {
        let facts = campaigns();
        let mapping = IngestMapping::default();
        let ctx = context(None, &facts, &mapping);
        let line = br#"{"click_id":"c1","campaign_id":"spring","clicked_at":1764324000,"extra":{"k":[1,2]},"ok":true}"#;
        let row = validate_json_line(line, 1, &ctx).unwrap();
        assert_eq!(row.attributes["extra"], serde_json::json!({"k": [1, 2]}));
        assert_eq!(row.attributes["ok"], serde_json::json!(true));
    }

    #[test]
    fn clicked_at_formats() {
        let utc = Tz::UTC;
        assert_eq!(parse_clicked_at("1764324000.5", utc).unwrap().timestamp_millis(), 1_764_324_000_500);
        assert_eq!(parse_clicked_at("2026-11-28 10:00:00Z", utc).unwrap().to_rfc3339(), "2026-11-28T10:00:00+00:00");
        assert!(parse_clicked_at("99", utc).is_err(), "1970 is a typo, not a click time");
        assert!(parse_clicked_at("2026-13-01T00:00:00Z", utc).is_err());
        assert_eq!(parse_clicked_at("2017-11-06 14:32:10", utc).unwrap().to_rfc3339(), "2017-11-06T14:32:10+00:00");
        assert_eq!(
            parse_clicked_at("2017-11-06T14:32:10.250", utc).unwrap().to_rfc3339(),
            "2017-11-06T14:32:10.250+00:00"
        );
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(parse_clicked_at("2017-11-06 14:32:10", berlin).unwrap().to_rfc3339(), "2017-11-06T13:32:10+00:00");
    }

    #[test]
    fn naive_times_on_dst_days_follow_the_documented_rule() {
        let new_york = chrono_tz::America::New_York;
        let at = |text: &str| parse_clicked_at(text, new_york).unwrap().to_rfc3339();
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT. 02:30 does not exist: moved forward by the gap, 03:30 EDT.
        assert_eq!(at("2026-03-08 01:59:59"), "2026-03-08T06:59:59+00:00");
        assert_eq!(at("2026-03-08 02:30:00"), "2026-03-08T07:30:00+00:00");
        assert_eq!(at("2026-03-08 03:30:00"), "2026-03-08T07:30:00+00:00");
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST. 01:30 happens twice: the first, daylight time.
        assert_eq!(at("2026-11-01 01:30:00"), "2026-11-01T05:30:00+00:00");
        assert_eq!(at("2026-11-01 02:30:00"), "2026-11-01T07:30:00+00:00");
    }

    #[test]
    fn mapped_columns_and_derived_ids() {
        let facts = campaigns();
        let spring = CampaignId::parse("spring").unwrap();
        let mapping = IngestMapping {
            columns: std::collections::BTreeMap::from([(KnownField::ClickedAt, "click_time".to_owned())]),
            derive_click_id_from: vec!["ip".into(), "app".into(), "click_time".into()],
            ..IngestMapping::default()
        };
        let ctx = context(Some(&spring), &facts, &mapping);
        let header = ["ip", "app", "device", "os", "channel", "click_time"];
        let columns = Columns::mapped(&header, &mapping).unwrap();
        let record = |cells: &[&str]| csv::ByteRecord::from(cells.to_vec());
        let row = validate_csv_record(
            &columns,
            &record(&["10.0.0.1", "3", "1", "13", "497", "2017-11-06 14:32:10"]),
            1,
            &ctx,
        )
        .unwrap();
        assert_eq!(row.click_id.as_str(), derive_click_id(["10.0.0.1", "3", "2017-11-06 14:32:10"]));
        assert_eq!(row.attributes["device"], "1");
        let empty = validate_csv_record(&columns, &record(&["", "", "1", "13", "497", ""]), 2, &ctx).unwrap_err();
        assert_eq!(empty.reason, RejectReason::NothingToDeriveClickIdFrom);
        assert!(matches!(
            Columns::mapped(&["ip", "app"], &mapping),
            Err(crate::ingest::FileError::MissingDerivationColumn(c)) if c == "click_time"
        ));
        // The same ids from a JSON row with the same values.
        let line = br#"{"ip":"10.0.0.1","app":3,"click_time":"2017-11-06 14:32:10"}"#;
        assert_eq!(validate_json_line(line, 1, &ctx).unwrap().click_id, row.click_id);
    }
}
