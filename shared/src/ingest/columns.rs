//! Header names to fields. Names match case-insensitively, with `-` and spaces read as `_`, and these aliases:
//!
//! | field | also accepted |
//! |---|---|
//! | `click_id` | `clickid`, `click` |
//! | `campaign_id` | `campaign`, `campaignid` |
//! | `clicked_at` | `click_time`, `clicktime`, `timestamp`, `time`, `ts` |
//! | `ip` | `ip_address`, `ipaddress`, `client_ip` |
//! | `user_agent` | `useragent`, `ua` |
//! | `landing_url` | `url`, `landing_page`, `final_url` |
//! | `sub_id` | `subid`, `sub` |
//!
//! Every other column is kept as an attribute under its name as written (trimmed), for partner templates.

use super::mapping::{IngestMapping, normalise};

/// Most attribute columns a file may carry.
pub const MAX_ATTRIBUTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnownField {
    ClickId,
    CampaignId,
    ClickedAt,
    Ip,
    UserAgent,
    LandingUrl,
    SubId,
}

impl KnownField {
    pub fn name(self) -> &'static str {
        match self {
            Self::ClickId => "click_id",
            Self::CampaignId => "campaign_id",
            Self::ClickedAt => "clicked_at",
            Self::Ip => "ip",
            Self::UserAgent => "user_agent",
            Self::LandingUrl => "landing_url",
            Self::SubId => "sub_id",
        }
    }

    /// Longest accepted value in bytes.
    pub fn max_len(self) -> usize {
        match self {
            Self::ClickId => 256,
            Self::CampaignId => 128,
            Self::ClickedAt => 64,
            Self::Ip => 64,
            Self::UserAgent => 1024,
            Self::LandingUrl => 4096,
            Self::SubId => 256,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        let normalized: String =
            name.trim().chars().map(|c| if c == '-' || c == ' ' { '_' } else { c.to_ascii_lowercase() }).collect();
        Some(match normalized.as_str() {
            "click_id" | "clickid" | "click" => Self::ClickId,
            "campaign_id" | "campaign" | "campaignid" => Self::CampaignId,
            "clicked_at" | "click_time" | "clicktime" | "timestamp" | "time" | "ts" => Self::ClickedAt,
            "ip" | "ip_address" | "ipaddress" | "client_ip" => Self::Ip,
            "user_agent" | "useragent" | "ua" => Self::UserAgent,
            "landing_url" | "url" | "landing_page" | "final_url" => Self::LandingUrl,
            "sub_id" | "subid" | "sub" => Self::SubId,
            _ => return None,
        })
    }
}

/// What a column (CSV) or key (NDJSON) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Known(KnownField),
    Attribute(String),
}

impl Field {
    pub fn from_name(name: &str) -> Self {
        KnownField::from_name(name).map_or_else(|| Self::Attribute(name.trim().to_owned()), Self::Known)
    }

    /// The name errors and reports use.
    pub fn name(&self) -> &str {
        match self {
            Self::Known(k) => k.name(),
            Self::Attribute(a) => a,
        }
    }
}

/// Why a whole file cannot be read: its upload fails with this status instead of crash-looping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is neither CSV with a header row nor NDJSON: {0}")]
    UnknownFormat(String),
    #[error(
        "the header has no click_id column (found: {0}); name the column holding click ids with the campaign's \
         ingest.columns.click_id, or have ids derived from columns with ingest.derive_click_id_from"
    )]
    NoClickIdColumn(String),
    #[error("the header has no column {0:?}, which the campaign's ingest.derive_click_id_from lists")]
    MissingDerivationColumn(String),
    #[error("the header names {0} twice")]
    DuplicateColumn(String),
    #[error("the header has {0} attribute columns; at most {MAX_ATTRIBUTES} are accepted")]
    TooManyColumns(usize),
    #[error("the file is not valid compressed data: {0}")]
    BadCompression(String),
    #[error("reading the file failed: {0}")]
    Read(String),
    /// A limit of [`super::IngestLimits`] was reached at `row`: rows before it are kept.
    #[error("reading stopped at row {row}: {limit}")]
    LimitReached { row: u64, limit: String },
}

/// A header (CSV's first row, or a Parquet file's schema), mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub fields: Vec<Field>,
    /// With a derived click id: the positions of the derivation columns, in the configured order.
    pub derive_from: Option<Vec<usize>>,
}

impl Columns {
    pub fn from_header(names: &[&str]) -> Result<Self, FileError> {
        Self::mapped(names, &IngestMapping::default())
    }

    /// The header read with a campaign's mapping.
    pub fn mapped(names: &[&str], mapping: &IngestMapping) -> Result<Self, FileError> {
        let fields: Vec<Field> = names.iter().map(|n| mapping.field(n)).collect();
        let derive_from = if mapping.derives_click_id() {
            let positions = mapping
                .derive_click_id_from
                .iter()
                .map(|wanted| {
                    names
                        .iter()
                        .position(|n| normalise(n) == normalise(wanted))
                        .ok_or_else(|| FileError::MissingDerivationColumn(wanted.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(positions)
        } else if !fields.contains(&Field::Known(KnownField::ClickId)) {
            return Err(FileError::NoClickIdColumn(names.join(",").chars().take(200).collect()));
        } else {
            None
        };
        for (i, field) in fields.iter().enumerate() {
            if fields[..i].contains(field) {
                return Err(FileError::DuplicateColumn(field.name().to_owned()));
            }
        }
        let attributes = fields.iter().filter(|f| matches!(f, Field::Attribute(_))).count();
        if attributes > MAX_ATTRIBUTES {
            return Err(FileError::TooManyColumns(attributes));
        }
        Ok(Self { fields, derive_from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_case_map_to_fields() {
        let c = Columns::from_header(&["Click-ID", "URL", "Time", "country"]).unwrap();
        assert_eq!(
            c.fields,
            vec![
                Field::Known(KnownField::ClickId),
                Field::Known(KnownField::LandingUrl),
                Field::Known(KnownField::ClickedAt),
                Field::Attribute("country".into()),
            ]
        );
    }

    #[test]
    fn bad_headers_are_named() {
        assert_eq!(Columns::from_header(&["id", "url"]).unwrap_err(), FileError::NoClickIdColumn("id,url".into()));
        assert_eq!(
            Columns::from_header(&["click_id", "clickid"]).unwrap_err(),
            FileError::DuplicateColumn("click_id".into())
        );
    }
}
