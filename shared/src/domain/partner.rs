//! Partners: the downstream endpoints clicks are delivered to.

use serde::{Deserialize, Serialize};

use super::ids::PartnerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryFormat {
    /// GET to a URL template whose macros are filled per click.
    Get,
    /// POST of a JSON body template.
    PostJson,
    /// POST of an `application/x-www-form-urlencoded` body.
    PostForm,
}

impl DeliveryFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::PostJson => "post_json",
            Self::PostForm => "post_form",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "get" => Some(Self::Get),
            "post_json" => Some(Self::PostJson),
            "post_form" => Some(Self::PostForm),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub partner_id: PartnerId,
    pub name: String,
    pub enabled: bool,
    pub delivery_format: DeliveryFormat,
    pub endpoint_template: String,
    pub body_template: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Per-partner secret for the HMAC-SHA256 signature header; never serialised back to clients.
    #[serde(skip_serializing, default)]
    pub signing_secret: Option<String>,
    pub success_body_match: Option<String>,
    pub timeout_ms: u32,
    pub rate_per_second: Option<u32>,
    pub max_concurrency: u32,
    pub max_attempts: u32,
    pub retry_base_ms: u32,
    pub retry_max_ms: u32,
}

impl Partner {
    /// A GET partner with default delivery settings.
    pub fn get(partner_id: PartnerId, endpoint_template: impl Into<String>) -> Self {
        Self {
            name: partner_id.to_string(),
            partner_id,
            enabled: true,
            delivery_format: DeliveryFormat::Get,
            endpoint_template: endpoint_template.into(),
            body_template: None,
            headers: Vec::new(),
            signing_secret: None,
            success_body_match: None,
            timeout_ms: 5000,
            rate_per_second: None,
            max_concurrency: 16,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 900_000,
        }
    }
}
