//! How a campaign's files map onto clicks, beyond what the reader works out by itself: which source column holds
//! which click field, how to make a click id for files that have none, which zone naive timestamps are in, and the
//! CSV delimiter. Every part has a default that needs no setting (the built-in aliases of [`super::columns`],
//! ids from a `click_id` column, UTC, a delimiter detected from the header).

use std::collections::BTreeMap;
use std::fmt;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::columns::KnownField;

/// Most columns a derived click id may be made from.
pub const MAX_DERIVATION_COLUMNS: usize = 16;

/// A campaign's ingest mapping, as stored with the campaign and set through the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IngestMapping {
    /// The source column (CSV header, JSON key or Parquet column) of a click field, e.g.
    /// `{"clicked_at": "event_time"}`. Matched case-insensitively; it wins over the built-in aliases, and a
    /// column that only matches an alias of a mapped field is kept as an attribute.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub columns: BTreeMap<KnownField, String>,
    /// Columns whose values make the click id (see [`derive_click_id`]), for files without a click id column.
    /// When set, it is used even if the file has a `click_id` column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derive_click_id_from: Vec<String>,
    /// The zone naive timestamps (`2017-11-06 14:32:10`, no offset) are read in.
    #[serde(default, skip_serializing_if = "TimestampZone::is_default")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "UTC"))]
    pub timestamp_zone: TimestampZone,
    /// The CSV delimiter; detected from the header row when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_delimiter: Option<Delimiter>,
}

impl IngestMapping {
    /// Whether every part is its default (nothing to store).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Field-level problems, as `(field path, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut seen: BTreeMap<String, KnownField> = BTreeMap::new();
        for (field, column) in &self.columns {
            let path = format!("ingest.columns.{}", field.name());
            if column.trim().is_empty() {
                problems.push((path, "must name a column".into()));
            } else if let Some(other) = seen.insert(normalise(column), *field) {
                problems.push((path, format!("names the same column as {}", other.name())));
            }
        }
        if self.derive_click_id_from.len() > MAX_DERIVATION_COLUMNS {
            problems.push((
                "ingest.derive_click_id_from".into(),
                format!("at most {MAX_DERIVATION_COLUMNS} columns, got {}", self.derive_click_id_from.len()),
            ));
        }
        for (i, column) in self.derive_click_id_from.iter().enumerate() {
            let path = format!("ingest.derive_click_id_from[{i}]");
            if column.trim().is_empty() {
                problems.push((path, "must name a column".into()));
            } else if self.derive_click_id_from[..i].iter().any(|c| normalise(c) == normalise(column)) {
                problems.push((path, format!("{column:?} is listed twice")));
            }
        }
        problems
    }

    /// The field a source column holds: the mapping first, then the built-in aliases (unless the alias's field is
    /// mapped to another column), else an attribute under the column's name.
    pub fn field(&self, name: &str) -> super::Field {
        let wanted = normalise(name);
        if let Some((field, _)) = self.columns.iter().find(|(_, column)| normalise(column) == wanted) {
            return super::Field::Known(*field);
        }
        match KnownField::from_name(name) {
            Some(field) if !self.columns.contains_key(&field) => super::Field::Known(field),
            _ => super::Field::Attribute(name.trim().to_owned()),
        }
    }

    /// Whether click ids are derived rather than read.
    pub fn derives_click_id(&self) -> bool {
        !self.derive_click_id_from.is_empty()
    }
}

/// Column names compare trimmed and case-insensitively.
pub fn normalise(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The click id made from `values` (the derivation columns' values in the configured order, trimmed; a missing
/// or null value is empty): `h` followed by the first 20 bytes of SHA-256, in hex, over each value's UTF-8 bytes
/// each followed by the byte 0x1F. The same row always yields the same id, so a file uploaded again is absorbed
/// as duplicates; rows that agree on every listed column are one click.
pub fn derive_click_id<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    for value in values {
        hash.update(value.trim().as_bytes());
        hash.update([0x1f]);
    }
    format!("h{}", hex::encode(&hash.finalize()[..20]))
}

/// The zone naive timestamps are read in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimestampZone {
    /// UTC (the default): `2017-11-06 14:32:10` is 14:32:10Z.
    #[default]
    Utc,
    /// The campaign's own time zone.
    Campaign,
    /// A named IANA zone.
    Zone(Tz),
}

impl TimestampZone {
    fn is_default(&self) -> bool {
        *self == Self::Utc
    }

    /// The zone itself, given the campaign's.
    pub fn resolve(self, campaign_zone: Tz) -> Tz {
        match self {
            Self::Utc => Tz::UTC,
            Self::Campaign => campaign_zone,
            Self::Zone(tz) => tz,
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "UTC" | "utc" => Ok(Self::Utc),
            "campaign" => Ok(Self::Campaign),
            name => name.parse::<Tz>().map(Self::Zone).map_err(|_| {
                format!("{name:?} is not \"UTC\", \"campaign\" or an IANA time zone such as \"Europe/Berlin\"")
            }),
        }
    }
}

impl fmt::Display for TimestampZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Utc => f.write_str("UTC"),
            Self::Campaign => f.write_str("campaign"),
            Self::Zone(tz) => f.write_str(tz.name()),
        }
    }
}

impl Serialize for TimestampZone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimestampZone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The CSV delimiters a file may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Delimiter {
    Comma,
    Semicolon,
    Tab,
    Pipe,
}

impl Delimiter {
    pub const ALL: [Self; 4] = [Self::Comma, Self::Semicolon, Self::Tab, Self::Pipe];

    pub fn byte(self) -> u8 {
        match self {
            Self::Comma => b',',
            Self::Semicolon => b';',
            Self::Tab => b'\t',
            Self::Pipe => b'|',
        }
    }

    /// The delimiter of a header line: the candidate found most often outside quotes (a comma when none is).
    /// A header line is one record of names, so the most frequent separator is its delimiter.
    pub fn detect(header_line: &[u8]) -> Self {
        let mut counts = [0usize; 4];
        let mut quoted = false;
        for &b in header_line {
            if b == b'"' {
                quoted = !quoted;
            } else if !quoted && let Some(i) = Self::ALL.iter().position(|d| d.byte() == b) {
                counts[i] += 1;
            }
        }
        let best = (0..4).max_by_key(|&i| (counts[i], std::cmp::Reverse(i))).unwrap_or(0);
        if counts[best] == 0 { Self::Comma } else { Self::ALL[best] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Field;

    #[test]
    fn a_mapped_column_wins_over_the_aliases() {
        let mapping = IngestMapping {
            columns: BTreeMap::from([(KnownField::ClickedAt, "Event Time".to_owned())]),
            ..IngestMapping::default()
        };
        assert_eq!(mapping.field("event time"), Field::Known(KnownField::ClickedAt));
        assert_eq!(mapping.field("timestamp"), Field::Attribute("timestamp".into()), "an alias of a mapped field");
        assert_eq!(mapping.field("IP"), Field::Known(KnownField::Ip));
        assert_eq!(IngestMapping::default().field("timestamp"), Field::Known(KnownField::ClickedAt));
    }

    #[test]
    fn derived_ids_are_stable_and_separate_values() {
        let a = derive_click_id(["1.2.3.4", "3", "2017-11-06 14:32:10"]);
        assert_eq!(a, derive_click_id([" 1.2.3.4 ", "3", "2017-11-06 14:32:10"]), "values are trimmed");
        assert_eq!(a.len(), 41);
        assert!(a.starts_with('h'));
        assert_ne!(derive_click_id(["ab", "c"]), derive_click_id(["a", "bc"]));
        assert!(crate::domain::ClickId::parse(a).is_ok());
    }

    #[test]
    fn delimiters_are_detected_outside_quotes() {
        assert_eq!(Delimiter::detect(b"click_id,ts,ip"), Delimiter::Comma);
        assert_eq!(Delimiter::detect(b"click_id;ts;\"a,b\""), Delimiter::Semicolon);
        assert_eq!(Delimiter::detect(b"click_id\tts\tip\r\n"), Delimiter::Tab);
        assert_eq!(Delimiter::detect(b"click_id|ts|ip"), Delimiter::Pipe);
        assert_eq!(Delimiter::detect(b"click_id"), Delimiter::Comma);
    }

    #[test]
    fn mappings_round_trip_and_report_problems() {
        let json = r#"{"columns":{"click_id":"id"},"derive_click_id_from":["ip","ip"],
                       "timestamp_zone":"Europe/Berlin","csv_delimiter":"semicolon"}"#;
        let mapping: IngestMapping = serde_json::from_str(json).unwrap();
        assert_eq!(mapping.timestamp_zone, TimestampZone::Zone(chrono_tz::Europe::Berlin));
        assert_eq!(mapping.csv_delimiter, Some(Delimiter::Semicolon));
        assert_eq!(
            mapping.problems(),
            vec![("ingest.derive_click_id_from[1]".to_owned(), "\"ip\" is listed twice".to_owned())]
        );
        let back: IngestMapping = serde_json::from_str(&serde_json::to_string(&mapping).unwrap()).unwrap();
        assert_eq!(back, mapping);
        assert!(serde_json::from_str::<IngestMapping>(r#"{"timestamp_zone":"Mars/Base"}"#).is_err());
        assert_eq!(serde_json::to_string(&IngestMapping::default()).unwrap(), "{}");
    }
}
