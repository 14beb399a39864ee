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

/// `Debug` is written by hand: the signing secret and header values (which often carry credentials) never reach a
/// log, only whether a secret is set and the header names.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::fmt::Debug for Partner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Partner")
            .field("partner_id", &self.partner_id)
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("delivery_format", &self.delivery_format)
            .field("endpoint_template", &self.endpoint_template)
            .field("body_template", &self.body_template)
            .field("header_names", &header_names)
            .field("signing_secret", &self.signing_secret.as_ref().map(|_| "<redacted>"))
            .field("success_body_match", &self.success_body_match)
            .field("timeout_ms", &self.timeout_ms)
            .field("rate_per_second", &self.rate_per_second)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_ms", &self.retry_base_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .finish()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets_or_header_values() {
        let mut p = Partner::get(PartnerId::parse("acme").unwrap(), "https://acme.example/c");
        p.signing_secret = Some("super-secret-value-123".into());
        p.headers = vec![("Authorization".into(), "Bearer token-456".into())];
        let debug = format!("{p:?}");
        assert!(!debug.contains("super-secret") && !debug.contains("token-456"), "{debug}");
        assert!(debug.contains("Authorization") && debug.contains("acme"), "{debug}");
    }
}
