//! A partner's templates, a click's values: the HTTP request to send.
//!
//! Templates use `{macro}` placeholders (see the list in [`super::validate`]); `{{` and `}}` are literal braces.
//!
//! - **URL** (every format): macros are allowed in the path and the query only, never in the scheme, host, port,
//!   user info or fragment, so a click's data can never choose where a request goes. The template is parsed once
//!   with the `url` crate (macros replaced by inert placeholders); at render time each value is percent-encoded
//!   (everything but RFC 3986 unreserved characters, so `/`, `?`, `&`, `=`, `+`, `#` and `%` in a value are
//!   data, never structure) and substituted into the parsed path or query. A value that would turn a whole path
//!   segment into `.` or `..` is refused ([`RenderError::DotSegment`]): URL normalisation would silently move it.
//! - **POST JSON**: the body template must be JSON; macros are read in string values only (object keys are
//!   literal), and each string becomes a JSON string built by `serde_json` (so quotes, backslashes and control
//!   characters are escaped). Numbers, booleans and `null` in the template stay as they are.
//! - **POST form**: the body template is a query-string style list (`id={click_id}&ua={user_agent}`), decoded as
//!   form data and re-encoded with `form_urlencoded::Serializer`; without a template every known field is sent
//!   (`click_id`, `campaign_id`, `clicked_at`, `clicked_at_unix`, `ip`, `user_agent`, `landing_url`, `sub_id`,
//!   `idempotency_key`, `batch_id`, then each attribute as `attr.NAME`).
//! - **Headers**: custom header values may use macros; a rendered value with CR, LF or another control character
//!   is refused ([`RenderError::InvalidHeaderValue`]), never sent. A custom `Content-Type` replaces the format's.
//!   Headers that frame the message or that ClickPacer sets itself are refused when the partner is saved.
//! - Every request carries `Idempotency-Key: <key>`, the same on every attempt.
//! - With a signing secret, `X-ClickPacer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over `"<t>."`
//!   followed by the body, or for a request without a body the URL's path and query (`/p/x?a=1`), as Stripe and
//!   Svix do. The timestamp is an input; partners should refuse signatures older than a few minutes
//!   ([`verify_signature`]).

use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use sha2::Sha256;
use url::Url;

use super::ClickForDelivery;
use super::template::{self, Macro, Piece, Template};
use crate::domain::{DeliveryFormat, Partner};

/// Sent on every attempt of a click's delivery, with the same value.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The HMAC signature header, when the partner has a signing secret.
pub const SIGNATURE_HEADER: &str = "X-ClickPacer-Signature";

/// Characters a value may keep unencoded anywhere in a path segment or a query: RFC 3986 "unreserved".
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Headers a partner may not set: they frame the message, or ClickPacer sets them itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-authorization",
    "proxy-connection",
    "idempotency-key",
    "x-clickpacer-signature",
];

/// One request, ready for an HTTP client: send `headers`, plus `Content-Type: content_type` when it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRequest {
    pub method: http::Method,
    pub url: Url,
    /// Custom headers, `Idempotency-Key` and the signature (not `Content-Type`: see `content_type`).
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
}

impl RenderedRequest {
    /// The bytes the signature covers: the body, or for a request without one the URL's path and query.
    pub fn signed_payload(&self) -> Vec<u8> {
        signed_payload(&self.url, self.body.as_deref())
    }

    /// The value of a header (case-insensitive name), if it is set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn signed_payload(url: &Url, body: Option<&[u8]>) -> Vec<u8> {
    match body {
        Some(body) => body.to_vec(),
        None => url[url::Position::BeforePath..url::Position::AfterQuery].as_bytes().to_vec(),
    }
}

/// Why one click could not be rendered for a valid partner (a permanent failure of that click, not of the
/// partner: dead-letter it with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("a value renders the URL path segment {0:?}, which URL normalisation would remove")]
    DotSegment(String),
    #[error("header {name}: the rendered value is not allowed ({reason})")]
    InvalidHeaderValue { name: String, reason: String },
    #[error("the rendered URL is invalid: {0}")]
    InvalidUrl(String),
}

/// A signature header that does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// The signature header's value for `payload` signed at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + payload)>`.
pub fn sign(secret: &[u8], timestamp: i64, payload: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, payload).finalize().into_bytes()))
}

fn mac(secret: &[u8], timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// What a partner does with the signature header: recompute it (constant-time comparison), accept any of
/// several `v1=` values (secret rotation), and refuse a timestamp more than `tolerance_s` from `now_unix`.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    payload: &[u8],
    now_unix: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_unix.abs_diff(timestamp) > tolerance_s.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    if signatures.iter().any(|s| mac(secret, timestamp, payload).verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The URL template, parsed: the path and the query as pieces where they hold macros.
#[derive(Debug, Clone)]
pub(super) struct UrlTemplate {
    pub(super) base: Url,
    path: Option<Template>,
    query: Option<Template>,
}

impl UrlTemplate {
    pub(super) fn compile(text: &str) -> Result<Self, String> {
        let pieces = template::parse(text).map_err(|e| format!("endpoint template: {e}"))?;
        // A placeholder that survives URL parsing unchanged in a path or a query (lowercase, alphanumeric) and
        // cannot be confused with the template's own text: not in it, and border-free (its first character occurs
        // nowhere else in it), so no text next to a placeholder can form another occurrence.
        let lower = text.to_ascii_lowercase();
        let mut marker = String::from("zxcpmacro");
        while lower.contains(&marker) {
            marker.push('q');
        }
        let mut macros = Vec::new();
        let mut marked = String::with_capacity(text.len());
        for piece in pieces {
            match piece {
                Piece::Lit(t) => marked.push_str(&t),
                Piece::Macro(m) => {
                    marked.push_str(&marker);
                    marked.push_str(&macros.len().to_string());
                    marked.push_str(&marker);
                    macros.push(m);
                }
            }
        }
        let base = Url::parse(&marked).map_err(|e| format!("endpoint template is not a valid URL: {e}"))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(format!("endpoint template: scheme {:?} is not http or https", base.scheme()));
        }
        let path = split_marked(base.path(), &marker, &macros);
        let query = base.query().and_then(|q| split_marked(q, &marker, &macros));
        let found = [&path, &query].into_iter().flatten().flatten().filter(|p| matches!(p, Piece::Macro(_))).count();
        if found != macros.len() {
            return Err("endpoint template: macros are allowed only in the URL path and query (not in the scheme, \
                        host, port, user info or fragment, and not in a path segment that normalisation removes)"
                .into());
        }
        Ok(Self { base, path, query })
    }

    fn render(&self, click: &ClickForDelivery) -> Result<Url, RenderError> {
        let encode = |v: &str, out: &mut String| out.extend(utf8_percent_encode(v, VALUE));
        let mut url = self.base.clone();
        if let Some(path) = &self.path {
            let rendered = template::render_with(path, click, encode);
            if let Some(seg) = rendered.split('/').find(|s| is_dot_segment(s)) {
                return Err(RenderError::DotSegment(seg.to_owned()));
            }
            url.set_path(&rendered);
        }
        if let Some(query) = &self.query {
            url.set_query(Some(&template::render_with(query, click, encode)));
        }
        if url.host_str() != self.base.host_str() {
            return Err(RenderError::InvalidUrl("the host changed while rendering".into()));
        }
        Ok(url)
    }
}

fn is_dot_segment(segment: &str) -> bool {
    matches!(segment.to_ascii_lowercase().as_str(), "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e")
}

/// A parsed URL component with placeholders back to pieces; `None` when it holds no placeholder.
fn split_marked(component: &str, marker: &str, macros: &[Macro]) -> Option<Template> {
    if !component.contains(marker) {
        return None;
    }
    let mut pieces = Vec::new();
    for (i, part) in component.split(marker).enumerate() {
        if i % 2 == 0 {
            if !part.is_empty() {
                pieces.push(Piece::Lit(part.to_owned()));
            }
        } else {
            // Only our own placeholders carry the marker, and each is `marker index marker`.
            let m = part.parse::<usize>().ok().and_then(|n| macros.get(n))?;
            pieces.push(Piece::Macro(m.clone()));
        }
    }
    Some(pieces)
}

/// A JSON body template: the JSON value with its macro-bearing strings parsed.
#[derive(Debug, Clone)]
pub(super) enum JsonNode {
    Static(Value),
    Text(Template),
    Array(Vec<JsonNode>),
    Object(Vec<(String, JsonNode)>),
}

impl JsonNode {
    fn compile(value: Value) -> Result<Self, String> {
        Ok(match value {
            Value::String(s) => {
                let t = template::parse(&s).map_err(|e| format!("body template: {e}"))?;
                if template::has_macros(&t) {
                    Self::Text(t)
                } else {
                    Self::Static(Value::String(template::render_static(&t)))
                }
            }
            Value::Array(items) => {
                let nodes = items.into_iter().map(Self::compile).collect::<Result<Vec<_>, _>>()?;
                if nodes.iter().all(|n| matches!(n, Self::Static(_))) {
                    Self::Static(Value::Array(nodes.into_iter().map(Self::into_static).collect()))
                } else {
                    Self::Array(nodes)
                }
            }
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, value) in map {
                    if key.contains('{') {
                        return Err(format!("body template: macros are not allowed in object keys ({key:?})"));
                    }
                    fields.push((key, Self::compile(value)?));
                }
                if fields.iter().all(|(_, n)| matches!(n, Self::Static(_))) {
                    Self::Static(Value::Object(fields.into_iter().map(|(k, n)| (k, n.into_static())).collect()))
                } else {
                    Self::Object(fields)
                }
            }
            other => Self::Static(other),
        })
    }

    fn into_static(self) -> Value {
        match self {
            Self::Static(v) => v,
            _ => unreachable!("only called on static nodes"),
        }
    }

    fn render(&self, click: &ClickForDelivery) -> Value {
        match self {
            Self::Static(v) => v.clone(),
            Self::Text(t) => Value::String(template::render(t, click)),
            Self::Array(items) => Value::Array(items.iter().map(|n| n.render(click)).collect()),
            Self::Object(fields) => Value::Object(fields.iter().map(|(k, n)| (k.clone(), n.render(click))).collect()),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum BodyTemplate {
    None,
    Json(JsonNode),
    Form(Vec<(String, Template)>),
    /// A form of every known field.
    FormAll,
}

/// A partner's templates, parsed and checked once; render as many clicks as needed.
#[derive(Debug, Clone)]
pub struct CompiledPartner {
    format: DeliveryFormat,
    url: UrlTemplate,
    body: BodyTemplate,
    headers: Vec<(String, Template)>,
    content_type: Option<String>,
    signing_secret: Option<Vec<u8>>,
}

impl CompiledPartner {
    /// Parses the partner's templates; the errors say what is wrong, all at once. Does not check the
    /// destination (see [`super::validate_partner`] and [`super::check_url`]).
    pub fn compile(partner: &Partner) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let url = UrlTemplate::compile(&partner.endpoint_template).map_err(|e| errors.push(e)).ok();
        let body = BodyTemplate::compile(partner.delivery_format, partner.body_template.as_deref())
            .map_err(|e| errors.push(e))
            .ok();
        let mut headers = Vec::new();
        let mut content_type = None;
        for (name, value) in &partner.headers {
            match compile_header(name, value) {
                Ok(HeaderKind::ContentType(v)) => content_type = Some(v),
                Ok(HeaderKind::Custom(t)) => headers.push((name.clone(), t)),
                Err(e) => errors.push(e),
            }
        }
        if partner.signing_secret.as_deref().is_some_and(str::is_empty) {
            errors.push("the signing secret must not be empty".into());
        }
        match (url, body) {
            (Some(url), Some(body)) if errors.is_empty() => Ok(Self {
                format: partner.delivery_format,
                url,
                body,
                headers,
                content_type,
                signing_secret: partner.signing_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            }),
            _ => Err(errors),
        }
    }

    /// The request delivering `click`; `signed_at` is the signature's timestamp (the send time).
    pub fn render(
        &self,
        click: &ClickForDelivery,
        signed_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<RenderedRequest, RenderError> {
        let url = self.url.render(click)?;
        let (method, body, default_type) = match &self.body {
            BodyTemplate::None => (http::Method::GET, None, None),
            BodyTemplate::Json(node) => {
                let body = serde_json::to_vec(&node.render(click)).expect("a JSON value always serialises");
                (http::Method::POST, Some(body), Some("application/json"))
            }
            BodyTemplate::Form(fields) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (key, value) in fields {
                    form.append_pair(key, &template::render(value, click));
                }
                (http::Method::POST, Some(form.finish().into_bytes()), Some(FORM))
            }
            BodyTemplate::FormAll => (http::Method::POST, Some(form_all(click).into_bytes()), Some(FORM)),
        };
        debug_assert_eq!(method == http::Method::GET, self.format == DeliveryFormat::Get);
        let mut headers = Vec::with_capacity(self.headers.len() + 2);
        for (name, value) in &self.headers {
            let rendered = template::render(value, click);
            if let Err(e) = http::HeaderValue::from_str(&rendered) {
                return Err(RenderError::InvalidHeaderValue {
                    name: name.clone(),
                    reason: format!("{e}: CR, LF and other control characters are refused"),
                });
            }
            headers.push((name.clone(), rendered));
        }
        if http::HeaderValue::from_str(&click.idempotency_key).is_err() {
            return Err(RenderError::InvalidHeaderValue {
                name: IDEMPOTENCY_HEADER.into(),
                reason: "control characters in the key".into(),
            });
        }
        headers.push((IDEMPOTENCY_HEADER.to_owned(), click.idempotency_key.clone()));
        if let Some(secret) = &self.signing_secret {
            let payload = signed_payload(&url, body.as_deref());
            headers.push((SIGNATURE_HEADER.to_owned(), sign(secret, signed_at.timestamp(), &payload)));
        }
        let content_type = self.content_type.clone().or_else(|| default_type.map(str::to_owned));
        Ok(RenderedRequest { method, url, headers, body, content_type })
    }
}

impl BodyTemplate {
    /// The body a partner of `format` sends, from its body template.
    pub(super) fn compile(format: DeliveryFormat, text: Option<&str>) -> Result<Self, String> {
        match (format, text) {
            (DeliveryFormat::Get, None) => Ok(Self::None),
            (DeliveryFormat::Get, Some(_)) => Err("a GET partner takes no body template".into()),
            (DeliveryFormat::PostJson, None) => Err("a JSON partner needs a body template".into()),
            (DeliveryFormat::PostJson, Some(text)) => serde_json::from_str::<Value>(text)
                .map_err(|e| format!("body template is not valid JSON: {e}"))
                .and_then(JsonNode::compile)
                .map(Self::Json),
            (DeliveryFormat::PostForm, None) => Ok(Self::FormAll),
            (DeliveryFormat::PostForm, Some(text)) => compile_form(text).map(Self::Form),
        }
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

fn form_all(click: &ClickForDelivery) -> String {
    let known = [
        ("click_id", Macro::ClickId),
        ("campaign_id", Macro::CampaignId),
        ("clicked_at", Macro::ClickedAt),
        ("clicked_at_unix", Macro::ClickedAtUnix),
        ("ip", Macro::Ip),
        ("user_agent", Macro::UserAgent),
        ("landing_url", Macro::LandingUrl),
        ("sub_id", Macro::SubId),
        ("idempotency_key", Macro::IdempotencyKey),
        ("batch_id", Macro::BatchId),
    ];
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (key, m) in &known {
        form.append_pair(key, &m.value(click));
    }
    for name in click.attributes.keys() {
        form.append_pair(&format!("attr.{name}"), &Macro::Attr(name.clone()).value(click));
    }
    form.finish()
}

fn compile_form(text: &str) -> Result<Vec<(String, Template)>, String> {
    url::form_urlencoded::parse(text.as_bytes())
        .map(|(key, value)| {
            if key.contains('{') {
                return Err(format!("body template: macros are not allowed in form keys ({key:?})"));
            }
            let value = template::parse(&value).map_err(|e| format!("body template: {e}"))?;
            Ok((key.into_owned(), value))
        })
        .collect()
}

pub(super) enum HeaderKind {
    ContentType(String),
    Custom(Template),
}

pub(super) fn compile_header(name: &str, value: &str) -> Result<HeaderKind, String> {
    let parsed =
        http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header name {name:?} is invalid"))?;
    let lower = parsed.as_str();
    if RESERVED_HEADERS.contains(&lower) || lower.starts_with("proxy-") {
        return Err(format!("header {name:?} is set by ClickPacer or the HTTP client and cannot be configured"));
    }
    let t = template::parse(value).map_err(|e| format!("header {name}: {e}"))?;
    for piece in &t {
        if let Piece::Lit(text) = piece
            && http::HeaderValue::from_str(text).is_err()
        {
            return Err(format!("header {name}: the value contains CR, LF or another control character"));
        }
    }
    if parsed == http::header::CONTENT_TYPE {
        if template::has_macros(&t) {
            return Err("header Content-Type: macros are not allowed".into());
        }
        return Ok(HeaderKind::ContentType(template::render_static(&t)));
    }
    Ok(HeaderKind::Custom(t))
}

/// Renders one click for a partner (parses the templates each time: the bridge keeps a [`CompiledPartner`]).
pub fn render_request(
    partner: &Partner,
    click: &ClickForDelivery,
    signed_at: chrono::DateTime<chrono::Utc>,
) -> Result<RenderedRequest, RenderRequestError> {
    let compiled = CompiledPartner::compile(partner).map_err(RenderRequestError::InvalidPartner)?;
    compiled.render(click, signed_at).map_err(RenderRequestError::Render)
}

/// Why [`render_request`] failed: the partner is invalid, or this click cannot be rendered for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderRequestError {
    #[error("invalid partner: {}", .0.join("; "))]
    InvalidPartner(Vec<String>),
    #[error(transparent)]
    Render(#[from] RenderError),
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::{CampaignId, ClickId, PartnerId};

    const TRICKY: &str = "Mozilla/5.0 (X11; a&b=c+d #frag ?q %41 \"q\" \\ é 🙂)";

    fn click() -> ClickForDelivery {
        let mut attributes = serde_json::Map::new();
        attributes.insert("tier".into(), Value::String("gold & silver".into()));
        attributes.insert("score".into(), serde_json::json!(12));
        ClickForDelivery {
            campaign_id: CampaignId::parse("spring.sale").unwrap(),
            click_id: ClickId::parse("c/1 ?&=").unwrap(),
            clicked_at: Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap(),
            ip: Some("2001:db8::1".parse().unwrap()),
            user_agent: Some(TRICKY.into()),
            landing_url: Some("https://shop.example/a?b=c&d=e#f".into()),
            sub_id: None,
            attributes,
            batch_id: 42,
            idempotency_key: "cp1-0123456789abcdef".into(),
        }
    }

    fn partner(format: DeliveryFormat, endpoint: &str, body: Option<&str>) -> Partner {
        Partner {
            delivery_format: format,
            body_template: body.map(str::to_owned),
            ..Partner::get(PartnerId::parse("acme").unwrap(), endpoint)
        }
    }

    fn at() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 5).unwrap()
    }

    fn render(p: &Partner) -> RenderedRequest {
        CompiledPartner::compile(p).unwrap().render(&click(), at()).unwrap()
    }

    #[test]
    fn get_values_are_encoded_for_their_position() {
        let p = partner(
            DeliveryFormat::Get,
            "https://p.example/c/{campaign_id}/{click_id}/t?click={click_id}&ua={user_agent}&ip={ip}&at={clicked_at}\
             &u={clicked_at_unix}&s={sub_id}&l={landing_url}&tier={attr.tier}&score={attr.score}&k={idempotency_key}\
             &b={batch_id}&none={attr.missing}&fixed=a%20b",
            None,
        );
        let r = render(&p);
        assert_eq!(r.method, http::Method::GET);
        assert_eq!(r.body, None);
        assert_eq!(r.content_type, None);
        assert_eq!(r.url.host_str(), Some("p.example"));
        assert_eq!(r.url.path(), "/c/spring.sale/c%2F1%20%3F%26%3D/t");
        let segments: Vec<_> = r.url.path_segments().unwrap().collect();
        assert_eq!(segments.len(), 4, "a '/' in a value is not a path separator");
        assert_eq!(percent_encoding::percent_decode_str(segments[2]).decode_utf8().unwrap(), "c/1 ?&=");
        let q: std::collections::HashMap<String, String> = r.url.query_pairs().into_owned().collect();
        assert_eq!(q["click"], "c/1 ?&=");
        assert_eq!(q["ua"], TRICKY);
        assert_eq!(q["ip"], "2001:db8::1");
        assert_eq!(q["at"], "2026-11-28T10:00:00Z");
        assert_eq!(q["u"], "1795860000");
        assert_eq!(q["s"], "");
        assert_eq!(q["l"], "https://shop.example/a?b=c&d=e#f");
        assert_eq!(q["tier"], "gold & silver");
        assert_eq!(q["score"], "12");
        assert_eq!(q["k"], "cp1-0123456789abcdef");
        assert_eq!(q["b"], "42");
        assert_eq!(q["none"], "");
        assert_eq!(q["fixed"], "a b", "literal encoding in the template is kept");
        assert_eq!(r.url.fragment(), None, "a '#' in a value does not start a fragment");
        assert_eq!(q.len(), 13, "no value added or split a pair");
        // '+' is encoded, so servers that read '+' as a space still see a plus.
        assert!(r.url.query().unwrap().contains("c%2Bd"));
        assert_eq!(r.header(IDEMPOTENCY_HEADER), Some("cp1-0123456789abcdef"));
        assert_eq!(r.header(SIGNATURE_HEADER), None);
    }

    #[test]
    fn a_value_cannot_climb_the_path() {
        let p = partner(DeliveryFormat::Get, "https://p.example/a/{sub_id}/b", None);
        let compiled = CompiledPartner::compile(&p).unwrap();
        for bad in ["..", ".", ".%2e"] {
            let c = ClickForDelivery { sub_id: Some(bad.into()), ..click() };
            let r = compiled.render(&c, at());
            if bad == ".%2e" {
                // '%' is encoded, so this is the harmless segment ".%252e".
                assert_eq!(r.unwrap().url.path(), "/a/.%252e/b");
            } else {
                assert_eq!(r.unwrap_err(), RenderError::DotSegment(bad.into()));
            }
        }
        let c = ClickForDelivery { sub_id: Some("x..y".into()), ..click() };
        assert_eq!(compiled.render(&c, at()).unwrap().url.path(), "/a/x..y/b");
        let c = ClickForDelivery { sub_id: None, ..click() };
        assert_eq!(compiled.render(&c, at()).unwrap().url.path(), "/a//b");
    }

    #[test]
    fn macros_only_in_path_and_query() {
        for endpoint in [
            "https://{sub_id}.p.example/x",
            "https://p.example:{sub_id}/x",
            "https://{sub_id}@p.example/x",
            "https://p.example/x#{click_id}",
            "https://p.example/{click_id}/../x",
            "{landing_url}",
        ] {
            let errors = CompiledPartner::compile(&partner(DeliveryFormat::Get, endpoint, None)).unwrap_err();
            assert_eq!(errors.len(), 1, "{endpoint}: {errors:?}");
        }
        let err = CompiledPartner::compile(&partner(DeliveryFormat::Get, "https://p.example/?x={clickid}", None));
        assert!(err.unwrap_err()[0].contains("unknown macro {clickid}"));
        let err = CompiledPartner::compile(&partner(DeliveryFormat::Get, "ftp://p.example/{click_id}", None));
        assert!(err.unwrap_err()[0].contains("not http or https"));
        let err = CompiledPartner::compile(&partner(DeliveryFormat::Get, "not a url {click_id}", None));
        assert!(err.unwrap_err()[0].contains("not a valid URL"));
        // A template that happens to contain the placeholder text still works.
        let p = partner(DeliveryFormat::Get, "https://p.example/zxcpmacro0zxcpmacro?a={click_id}&zxcpmacro=1", None);
        let r = render(&p);
        assert_eq!(r.url.as_str(), "https://p.example/zxcpmacro0zxcpmacro?a=c%2F1%20%3F%26%3D&zxcpmacro=1");
    }

    #[test]
    fn json_bodies_escape_values() {
        let template = r#"{"click": "{click_id}", "ua": "{user_agent}", "at": "{clicked_at}",
            "nested": {"list": ["{attr.tier}", 1, true, null, "lit {{x}}"], "n": 3.5}, "empty": "{sub_id}",
            "combo": "{campaign_id}:{batch_id}"}"#;
        let r = render(&partner(DeliveryFormat::PostJson, "https://p.example/in", Some(template)));
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let body: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "click": "c/1 ?&=", "ua": TRICKY, "at": "2026-11-28T10:00:00Z",
                "nested": {"list": ["gold & silver", 1, true, null, "lit {x}"], "n": 3.5}, "empty": "",
                "combo": "spring.sale:42"
            })
        );
        // A value that looks like JSON stays a string.
        let c = ClickForDelivery { sub_id: Some(r#"", "admin": true, "x": ""#.into()), ..click() };
        let p = partner(DeliveryFormat::PostJson, "https://p.example/in", Some(r#"{"s": "{sub_id}"}"#));
        let r = CompiledPartner::compile(&p).unwrap().render(&c, at()).unwrap();
        let body: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(body.as_object().unwrap().len(), 1);
        assert_eq!(body["s"], r#"", "admin": true, "x": ""#);

        let bad = |t: &str| CompiledPartner::compile(&partner(DeliveryFormat::PostJson, "https://p.example/", Some(t)));
        assert!(bad("{not json").unwrap_err()[0].contains("not valid JSON"));
        assert!(bad(r#"{"{click_id}": 1}"#).unwrap_err()[0].contains("object keys"));
        assert!(bad(r#"{"a": "{nope}"}"#).unwrap_err()[0].contains("unknown macro {nope}"));
        let none = CompiledPartner::compile(&partner(DeliveryFormat::PostJson, "https://p.example/", None));
        assert!(none.unwrap_err()[0].contains("needs a body template"));
    }

    #[test]
    fn form_bodies_from_a_template_or_every_field() {
        let p = partner(
            DeliveryFormat::PostForm,
            "https://p.example/form?src={campaign_id}",
            Some("id={click_id}&ua={user_agent}&fixed=a+b%26c&tier={attr.tier}"),
        );
        let r = render(&p);
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
        assert_eq!(r.url.query(), Some("src=spring.sale"));
        let body = r.body.unwrap();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("id".into(), "c/1 ?&=".into()),
                ("ua".into(), TRICKY.into()),
                ("fixed".into(), "a b&c".into()),
                ("tier".into(), "gold & silver".into())
            ]
        );

        let r = render(&partner(DeliveryFormat::PostForm, "https://p.example/form", None));
        let pairs: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(r.body.as_ref().unwrap()).into_owned().collect();
        assert_eq!(pairs["click_id"], "c/1 ?&=");
        assert_eq!(pairs["user_agent"], TRICKY);
        assert_eq!(pairs["sub_id"], "");
        assert_eq!(pairs["clicked_at_unix"], "1795860000");
        assert_eq!(pairs["attr.tier"], "gold & silver");
        assert_eq!(pairs["attr.score"], "12");
        assert_eq!(pairs["idempotency_key"], "cp1-0123456789abcdef");
        assert_eq!(pairs.len(), 12);

        let bad =
            CompiledPartner::compile(&partner(DeliveryFormat::PostForm, "https://p.example/", Some("{click_id}=1")));
        assert!(bad.unwrap_err()[0].contains("form keys"));
    }

    #[test]
    fn headers_take_macros_but_never_line_breaks() {
        let mut p = partner(DeliveryFormat::Get, "https://p.example/t", None);
        p.headers = vec![
            ("X-Click".into(), "{click_id}".into()),
            ("User-Agent".into(), "{user_agent}".into()),
            ("Authorization".into(), "Bearer abc".into()),
            ("Content-Type".into(), "text/plain".into()),
        ];
        let r = render(&p);
        assert_eq!(r.header("x-click"), Some("c/1 ?&="));
        assert_eq!(r.header("User-Agent"), Some(TRICKY));
        assert_eq!(r.header("Authorization"), Some("Bearer abc"));
        assert_eq!(r.header("Content-Type"), None);
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        let compiled = CompiledPartner::compile(&p).unwrap();
        for evil in ["a\r\nX-Evil: 1", "a\nb", "a\rb", "a\0b"] {
            let c = ClickForDelivery { user_agent: Some(evil.into()), ..click() };
            assert!(
                matches!(compiled.render(&c, at()), Err(RenderError::InvalidHeaderValue { ref name, .. }) if name == "User-Agent"),
                "{evil:?}"
            );
        }

        for (name, value, expected) in [
            ("Bad Name", "x", "is invalid"),
            ("X-A:", "x", "is invalid"),
            ("", "x", "is invalid"),
            ("Host", "evil.example", "cannot be configured"),
            ("Content-Length", "1", "cannot be configured"),
            ("Transfer-Encoding", "chunked", "cannot be configured"),
            ("Idempotency-Key", "x", "cannot be configured"),
            ("X-ClickPacer-Signature", "x", "cannot be configured"),
            ("Proxy-Anything", "x", "cannot be configured"),
            ("X-Ok", "a\r\nb", "control character"),
            ("X-Ok", "{nope}", "unknown macro"),
            ("Content-Type", "{user_agent}", "macros are not allowed"),
        ] {
            let mut p = partner(DeliveryFormat::Get, "https://p.example/t", None);
            p.headers = vec![(name.into(), value.into())];
            let errors = CompiledPartner::compile(&p).unwrap_err();
            assert!(errors.len() == 1 && errors[0].contains(expected), "{name}: {errors:?}");
        }
    }

    #[test]
    fn signatures_cover_the_body_or_the_path_and_query() {
        let mut p = partner(DeliveryFormat::PostJson, "https://p.example/in", Some(r#"{"c": "{click_id}"}"#));
        p.signing_secret = Some("0123456789abcdef-secret".into());
        let r = render(&p);
        let header = r.header(SIGNATURE_HEADER).unwrap().to_owned();
        assert!(header.starts_with(&format!("t={},v1=", at().timestamp())), "{header}");
        assert_eq!(r.signed_payload(), r.body.clone().unwrap());
        let secret = b"0123456789abcdef-secret";
        assert_eq!(verify_signature(secret, &header, r.body.as_ref().unwrap(), at().timestamp() + 10, 300), Ok(()));
        assert_eq!(verify_signature(secret, &header, b"{}", at().timestamp(), 300), Err(SignatureError::Mismatch));
        assert_eq!(
            verify_signature(b"other", &header, &r.signed_payload(), at().timestamp(), 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, &header, &r.signed_payload(), at().timestamp() + 301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify_signature(secret, "v1=00", b"", 0, 300), Err(SignatureError::Malformed));
        assert_eq!(verify_signature(secret, "t=1,v1=zz", b"", 1, 300), Err(SignatureError::Malformed));
        // A rotated secret: either signature may match.
        let two = format!("{header},v1={}", "00".repeat(32));
        assert_eq!(verify_signature(secret, &two, &r.signed_payload(), at().timestamp(), 300), Ok(()));

        let mut p = partner(DeliveryFormat::Get, "https://p.example/t/{campaign_id}?c={click_id}#frag", None);
        p.signing_secret = Some("0123456789abcdef-secret".into());
        let r = render(&p);
        assert_eq!(r.signed_payload(), b"/t/spring.sale?c=c%2F1%20%3F%26%3D".to_vec());
        let header = r.header(SIGNATURE_HEADER).unwrap();
        assert_eq!(verify_signature(secret, header, &r.signed_payload(), at().timestamp(), 300), Ok(()));
    }

    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2 is HMAC-SHA256("Jefe", "what do ya want for nothing?"); with t=0 our message is
        // "0." + payload, so compute the vector's message through that framing by checking a known answer.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let expected = {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"key").unwrap();
            mac.update(b"1700000000.payload");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(sign(b"key", 1_700_000_000, b"payload"), format!("t=1700000000,v1={expected}"));
    }

    #[test]
    fn render_request_reports_both_kinds_of_failure() {
        let p = partner(DeliveryFormat::Get, "https://p.example/{nope}", None);
        assert!(matches!(render_request(&p, &click(), at()), Err(RenderRequestError::InvalidPartner(_))));
        let p = partner(DeliveryFormat::Get, "https://p.example/{sub_id}", None);
        let c = ClickForDelivery { sub_id: Some("..".into()), ..click() };
        assert!(matches!(render_request(&p, &c, at()), Err(RenderRequestError::Render(RenderError::DotSegment(_)))));
        let p = partner(DeliveryFormat::Get, "https://p.example/{sub_id}", None);
        assert_eq!(render_request(&p, &click(), at()).unwrap().url.as_str(), "https://p.example/");
    }
}
