//! A partner as people write it: the management API's request body, read into a [`Partner`]. Signing secrets and
//! header values are write-only: the API never shows them, so a replace may leave them out to keep the stored
//! ones. What the partner's templates and endpoint may be is checked by
//! [`validate_partner`](crate::delivery::validate_partner) on the result.

use serde::{Deserialize, Deserializer};

use super::campaign_spec::FieldError;
use super::ids::PartnerId;
use super::partner::{DeliveryFormat, Partner};

/// A partner's configuration. Whether it is enabled changes through actions (enable, disable), not this body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PartnerSpec {
    /// 1-64 characters: lowercase letters, digits, `_`, `-`, starting with a letter or digit. Fixed once created.
    #[cfg_attr(feature = "openapi", schema(example = "acme"))]
    pub partner_id: String,
    /// 1-200 characters.
    pub name: String,
    /// `get` (the default): a GET to the endpoint template; `post_json`: a POST of the body template as JSON;
    /// `post_form`: a POST of a form (the body template's fields, or every click field).
    #[serde(default = "get")]
    pub delivery_format: String,
    /// The URL, with macros such as `{click_id}`, `{ip}` or `{attr.extra.k}` in its path and query.
    #[cfg_attr(feature = "openapi", schema(example = "https://track.acme.example/c?id={click_id}&ip={ip}"))]
    pub endpoint_template: String,
    #[serde(default)]
    pub body_template: Option<String>,
    /// Extra request headers. Values are write-only: a header given without a `value` keeps its stored one.
    #[serde(default)]
    pub headers: Vec<HeaderSpec>,
    /// Secret of the HMAC-SHA256 signature header, 16-512 bytes; write-only. Left out, a replace keeps the stored
    /// one; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub signing_secret: Option<Option<String>>,
    /// A 2xx answer counts as delivered only when its body contains this text.
    #[serde(default)]
    pub success_body_match: Option<String>,
    #[serde(default = "timeout_ms")]
    pub timeout_ms: i64,
    /// Requests a second the partner takes; absent: learned from its answers.
    #[serde(default)]
    pub rate_per_second: Option<i64>,
    #[serde(default = "max_concurrency")]
    pub max_concurrency: i64,
    #[serde(default = "max_attempts")]
    pub max_attempts: i64,
    #[serde(default = "retry_base_ms")]
    pub retry_base_ms: i64,
    #[serde(default = "retry_max_ms")]
    pub retry_max_ms: i64,
}

/// One request header.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    pub name: String,
    /// May use macros. Write-only: left out, the stored value of the header of that name is kept.
    #[serde(default)]
    pub value: Option<String>,
}

fn get() -> String {
    "get".into()
}
fn timeout_ms() -> i64 {
    5000
}
fn max_concurrency() -> i64 {
    16
}
fn max_attempts() -> i64 {
    8
}
fn retry_base_ms() -> i64 {
    1000
}
fn retry_max_ms() -> i64 {
    900_000
}

/// A field that may be absent (outer `None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl PartnerSpec {
    /// The partner this spec describes, enabled or not. `stored` is the partner it replaces: its signing secret
    /// and header values stand where the spec leaves them out. Errors are the spec's own shape problems (ids,
    /// formats, numbers out of range, a header without a value and none stored); the rest is
    /// [`validate_partner`](crate::delivery::validate_partner)'s.
    pub fn to_partner(&self, enabled: bool, stored: Option<&Partner>) -> Result<Partner, Vec<FieldError>> {
        let mut errors = Vec::new();
        let partner_id = PartnerId::parse(self.partner_id.clone())
            .map_err(|e| errors.push(FieldError::new("partner_id", e.to_string())))
            .ok();
        let delivery_format = DeliveryFormat::parse(&self.delivery_format)
            .ok_or_else(|| {
                let message = format!("{:?} is not one of get, post_json, post_form", self.delivery_format);
                errors.push(FieldError::new("delivery_format", message));
            })
            .ok();
        let mut number = |field: &str, value: i64| -> u32 {
            u32::try_from(value).unwrap_or_else(|_| {
                errors.push(FieldError::new(
                    field,
                    format!("must be a whole number from 0 to {} (got {value})", u32::MAX),
                ));
                0
            })
        };
        let timeout_ms = number("timeout_ms", self.timeout_ms);
        let rate_per_second = self.rate_per_second.map(|r| number("rate_per_second", r));
        let max_concurrency = number("max_concurrency", self.max_concurrency);
        let max_attempts = number("max_attempts", self.max_attempts);
        let retry_base_ms = number("retry_base_ms", self.retry_base_ms);
        let retry_max_ms = number("retry_max_ms", self.retry_max_ms);
        let mut headers = Vec::with_capacity(self.headers.len());
        for (i, header) in self.headers.iter().enumerate() {
            let kept = || {
                stored?.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(&header.name)).map(|(_, v)| v.clone())
            };
            match header.value.clone().or_else(kept) {
                Some(value) => headers.push((header.name.clone(), value)),
                None => errors.push(FieldError::new(
                    format!("headers[{i}].value"),
                    format!("header {:?} has no stored value to keep: give its value", header.name),
                )),
            }
        }
        let signing_secret = match &self.signing_secret {
            None => stored.and_then(|p| p.signing_secret.clone()),
            Some(secret) => secret.clone(),
        };
        match (partner_id, delivery_format) {
            (Some(partner_id), Some(delivery_format)) if errors.is_empty() => Ok(Partner {
                partner_id,
                name: self.name.clone(),
                enabled,
                delivery_format,
                endpoint_template: self.endpoint_template.clone(),
                body_template: self.body_template.clone(),
                headers,
                signing_secret,
                success_body_match: self.success_body_match.clone(),
                timeout_ms,
                rate_per_second,
                max_concurrency,
                max_attempts,
                retry_base_ms,
                retry_max_ms,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> PartnerSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn write_only_values_are_kept_when_left_out_and_removed_by_null() {
        let first =
            spec(serde_json::json!({"partner_id": "acme", "name": "Acme", "endpoint_template": "https://a.example/c",
            "headers": [{"name": "Authorization", "value": "Bearer t-1"}], "signing_secret": "0123456789abcdef"}));
        let stored = first.to_partner(true, None).unwrap();
        assert_eq!(stored.headers, [("Authorization".to_owned(), "Bearer t-1".to_owned())]);
        assert_eq!(stored.signing_secret.as_deref(), Some("0123456789abcdef"));

        let kept = spec(
            serde_json::json!({"partner_id": "acme", "name": "Acme 2", "endpoint_template": "https://a.example/c",
            "headers": [{"name": "authorization"}]}),
        );
        let replaced = kept.to_partner(false, Some(&stored)).unwrap();
        assert_eq!(replaced.headers, [("authorization".to_owned(), "Bearer t-1".to_owned())]);
        assert_eq!(replaced.signing_secret.as_deref(), Some("0123456789abcdef"));
        assert!(!replaced.enabled);

        let removed =
            spec(serde_json::json!({"partner_id": "acme", "name": "Acme", "endpoint_template": "https://a.example/c",
            "signing_secret": null}));
        let replaced = removed.to_partner(true, Some(&stored)).unwrap();
        assert_eq!((replaced.signing_secret, replaced.headers), (None, vec![]));
    }

    #[test]
    fn shape_problems_are_named_by_field() {
        let bad =
            spec(serde_json::json!({"partner_id": "Not Valid", "name": "x", "endpoint_template": "https://a.example/",
            "delivery_format": "put", "timeout_ms": -1, "headers": [{"name": "X-Key"}]}));
        let fields: Vec<String> = bad.to_partner(true, None).unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["partner_id", "delivery_format", "timeout_ms", "headers[0].value"]);
    }
}
