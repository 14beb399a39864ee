//! Everything wrong with a partner, field by field, checked when it is saved (the management API) so that a
//! partner the bridge cannot deliver to is refused with reasons instead of dead-lettering every click:
//!
//! - templates parse, use only known macros (`{click_id}`, `{campaign_id}`, `{ip}`, `{user_agent}`,
//!   `{clicked_at}`, `{clicked_at_unix}`, `{sub_id}`, `{landing_url}`, `{idempotency_key}`, `{batch_id}`,
//!   `{attr.NAME}`, `{attr.NAME.PATH}`), and use them only where allowed (URL path and query, JSON string values,
//!   form values, header values);
//! - the endpoint is http or https, has no user info, and is not a forbidden address (see [`check_url`];
//!   `allow_private` is the local-use setting); host names are checked again against DNS at send time;
//! - a JSON partner has a JSON body template, a GET partner none;
//! - header names are valid tokens and not reserved; values have no control characters;
//! - the numbers are within the schema's bounds;
//! - a sample click, with every field and a nested attribute, renders into a request: what the bridge will do
//!   with real clicks.

use chrono::{TimeZone, Utc};

use super::ClickForDelivery;
use super::render::{BodyTemplate, UrlTemplate, compile_header, render_request};
use super::ssrf::check_url;
use crate::domain::{CampaignId, ClickId, FieldError, Partner};

/// The partner's problems, each against the field that has it; empty when it can be saved.
pub fn validate_partner(partner: &Partner, allow_private: bool) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut problem = |field: &str, message: String| errors.push(FieldError::new(field, message));
    match UrlTemplate::compile(&partner.endpoint_template) {
        Ok(url) => {
            if let Err(e) = check_url(&url.base, allow_private) {
                problem("endpoint_template", format!("endpoint: {e}"));
            }
        }
        Err(e) => problem("endpoint_template", e),
    }
    if let Err(e) = BodyTemplate::compile(partner.delivery_format, partner.body_template.as_deref()) {
        problem("body_template", e);
    }
    for (i, (name, value)) in partner.headers.iter().enumerate() {
        if let Err(e) = compile_header(name, value) {
            problem(&format!("headers[{i}]"), e);
        }
        if partner.headers[..i].iter().any(|(other, _)| other.eq_ignore_ascii_case(name)) {
            problem(&format!("headers[{i}]"), format!("header {name:?} is given twice"));
        }
    }
    let mut check = |ok: bool, field: &str, message: &str| {
        if !ok {
            problem(field, message.to_owned());
        }
    };
    check(
        !partner.name.trim().is_empty() && partner.name.len() <= 200,
        "name",
        "the name must have 1 to 200 characters",
    );
    check(
        partner.endpoint_template.len() <= 4096,
        "endpoint_template",
        "the endpoint template is longer than 4096 bytes",
    );
    check(
        partner.body_template.as_ref().is_none_or(|b| b.len() <= 65_536),
        "body_template",
        "the body template is longer than 65536 bytes",
    );
    check(
        partner.signing_secret.as_ref().is_none_or(|s| (16..=512).contains(&s.len())),
        "signing_secret",
        "the signing secret must have 16 to 512 bytes",
    );
    check(
        partner.success_body_match.as_ref().is_none_or(|s| s.len() <= 1024),
        "success_body_match",
        "the success body match is longer than 1024 bytes",
    );
    check((100..=60_000).contains(&partner.timeout_ms), "timeout_ms", "timeout_ms must be between 100 and 60000");
    check(partner.rate_per_second.is_none_or(|r| r > 0), "rate_per_second", "rate_per_second must be positive");
    check(
        (1..=1024).contains(&partner.max_concurrency),
        "max_concurrency",
        "max_concurrency must be between 1 and 1024",
    );
    check((1..=50).contains(&partner.max_attempts), "max_attempts", "max_attempts must be between 1 and 50");
    check(
        (10..=3_600_000).contains(&partner.retry_base_ms),
        "retry_base_ms",
        "retry_base_ms must be between 10 and 3600000",
    );
    check(
        (10..=43_200_000).contains(&partner.retry_max_ms),
        "retry_max_ms",
        "retry_max_ms must be between 10 and 43200000",
    );
    check(
        partner.retry_max_ms >= partner.retry_base_ms,
        "retry_max_ms",
        "retry_max_ms must not be below retry_base_ms",
    );
    if errors.is_empty()
        && let Err(e) = render_request(partner, &sample_click(), Utc::now())
    {
        errors.push(FieldError::new("endpoint_template", format!("a sample click does not render: {e}")));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// A click with every field set and a nested attribute, as a realistic file would give one.
pub fn sample_click() -> ClickForDelivery {
    let mut attributes = serde_json::Map::new();
    attributes.insert("country".into(), serde_json::json!("DE"));
    attributes.insert("extra".into(), serde_json::json!({"segment": ["returning", "mobile"], "score": 7}));
    ClickForDelivery {
        campaign_id: CampaignId::parse("sample-campaign").expect("a valid id"),
        click_id: ClickId::parse("sample-click-1").expect("a valid id"),
        clicked_at: Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).single().unwrap_or_default(),
        ip: Some(std::net::IpAddr::from([192, 0, 2, 10])),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0".into()),
        landing_url: Some("https://shop.example/p/1?utm_source=clickpacer".into()),
        sub_id: Some("s-1".into()),
        attributes,
        batch_id: 1,
        idempotency_key: "cp1-sample".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeliveryFormat, PartnerId};

    fn partner(format: DeliveryFormat, endpoint: &str, body: Option<&str>) -> Partner {
        let mut p = Partner::get(PartnerId::parse("p").unwrap(), endpoint);
        p.delivery_format = format;
        p.body_template = body.map(str::to_owned);
        p
    }

    fn fields(result: Result<(), Vec<FieldError>>) -> Vec<(String, String)> {
        result.unwrap_err().into_iter().map(|e| (e.field, e.message)).collect()
    }

    #[test]
    fn partners_are_validated_whole_and_field_by_field() {
        let good = partner(DeliveryFormat::Get, "https://p.example/t?c={click_id}&x={attr.extra.score}", None);
        assert_eq!(validate_partner(&good, false), Ok(()));
        let local = partner(DeliveryFormat::Get, "http://127.0.0.1:8080/p/acme?c={click_id}", None);
        assert!(fields(validate_partner(&local, false))[0].1.contains("loopback"));
        assert_eq!(validate_partner(&local, true), Ok(()));
        let metadata = partner(DeliveryFormat::Get, "http://169.254.169.254/latest/{click_id}", None);
        assert!(fields(validate_partner(&metadata, true))[0].1.contains("metadata"));
        let creds = partner(DeliveryFormat::Get, "https://u:p@p.example/", None);
        assert!(fields(validate_partner(&creds, false))[0].1.contains("user name"));

        let mut bad = partner(DeliveryFormat::Get, "https://p.example/{nope}", Some("x"));
        bad.timeout_ms = 0;
        bad.max_concurrency = 0;
        bad.retry_max_ms = 5;
        bad.signing_secret = Some("short".into());
        bad.headers =
            vec![("Bad Header".into(), "v".into()), ("X-Key".into(), "a".into()), ("x-key".into(), "b".into())];
        let errors = fields(validate_partner(&bad, false));
        for (field, expected) in [
            ("endpoint_template", "unknown macro {nope}"),
            ("body_template", "GET partner takes no body"),
            ("headers[0]", "Bad Header"),
            ("headers[2]", "given twice"),
            ("timeout_ms", "timeout_ms"),
            ("max_concurrency", "max_concurrency"),
            ("retry_max_ms", "retry_max_ms must be between"),
            ("retry_max_ms", "retry_max_ms must not be below"),
            ("signing_secret", "signing secret"),
        ] {
            assert!(
                errors.iter().any(|(f, m)| f == field && m.contains(expected)),
                "{field}: {expected} in {errors:?}"
            );
        }
        let json = partner(DeliveryFormat::PostJson, "https://p.example/c", Some(r#"{"id": "{click_id}""#));
        assert_eq!(fields(validate_partner(&json, false))[0].0, "body_template");
    }
}
