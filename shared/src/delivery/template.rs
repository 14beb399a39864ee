//! The macro language shared by every template: `{name}` is replaced by a click's value, `{{` and `}}` stand for
//! literal braces, a lone `}` is literal, and an unknown name or an unclosed `{` is an error.

use std::borrow::Cow;

use super::ClickForDelivery;

/// One value a template can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Macro {
    ClickId,
    CampaignId,
    Ip,
    UserAgent,
    /// RFC 3339 in UTC, e.g. `2026-11-28T10:00:00Z` (fractional seconds only when present).
    ClickedAt,
    /// Seconds since the epoch.
    ClickedAtUnix,
    SubId,
    LandingUrl,
    IdempotencyKey,
    BatchId,
    /// `{attr.NAME}`: an extra column of the click file; `{attr.NAME.KEY.0}` reaches into a nested value (see
    /// [`attribute`]).
    Attr(String),
}

/// Every name a template may use, for error messages.
pub(crate) const KNOWN_MACROS: &str = "click_id, campaign_id, ip, user_agent, clicked_at, clicked_at_unix, sub_id, \
                                       landing_url, idempotency_key, batch_id, attr.NAME, attr.NAME.PATH";

impl Macro {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "click_id" => Self::ClickId,
            "campaign_id" => Self::CampaignId,
            "ip" => Self::Ip,
            "user_agent" => Self::UserAgent,
            "clicked_at" => Self::ClickedAt,
            "clicked_at_unix" => Self::ClickedAtUnix,
            "sub_id" => Self::SubId,
            "landing_url" => Self::LandingUrl,
            "idempotency_key" => Self::IdempotencyKey,
            "batch_id" => Self::BatchId,
            _ => {
                let attr = name.strip_prefix("attr.")?;
                if attr.is_empty() {
                    return None;
                }
                Self::Attr(attr.to_owned())
            }
        })
    }

    /// The click's value; a missing optional value is empty. Attributes that are not strings render as compact
    /// JSON (`12`, `true`, `{"k":[1,2]}`); `null` renders empty.
    pub(crate) fn value<'c>(&self, click: &'c ClickForDelivery) -> Cow<'c, str> {
        let opt = |v: &'c Option<String>| Cow::Borrowed(v.as_deref().unwrap_or(""));
        match self {
            Self::ClickId => Cow::Borrowed(click.click_id.as_str()),
            Self::CampaignId => Cow::Borrowed(click.campaign_id.as_str()),
            Self::Ip => click.ip.map_or(Cow::Borrowed(""), |ip| Cow::Owned(ip.to_string())),
            Self::UserAgent => opt(&click.user_agent),
            Self::ClickedAt => Cow::Owned(click.clicked_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            Self::ClickedAtUnix => Cow::Owned(click.clicked_at.timestamp().to_string()),
            Self::SubId => opt(&click.sub_id),
            Self::LandingUrl => opt(&click.landing_url),
            Self::IdempotencyKey => Cow::Borrowed(&click.idempotency_key),
            Self::BatchId => Cow::Owned(click.batch_id.to_string()),
            Self::Attr(path) => match attribute(&click.attributes, path) {
                None | Some(serde_json::Value::Null) => Cow::Borrowed(""),
                Some(serde_json::Value::String(s)) => Cow::Borrowed(s),
                Some(other) => Cow::Owned(other.to_string()),
            },
        }
    }
}

/// The attribute a template names: the attribute of that exact name (a column may be called `a.b`), else the
/// attribute named by the longest leading part of the path that names one, and the rest of the path, dot by dot,
/// as keys of objects and indexes of arrays within it: `extra.k.1` in `{"extra": {"k": [1, 2]}}` is `2`. A path
/// that leads nowhere is absent (renders empty).
fn attribute<'c>(
    attributes: &'c serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'c serde_json::Value> {
    if let Some(value) = attributes.get(path) {
        return Some(value);
    }
    let mut end = path.len();
    while let Some(dot) = path[..end].rfind('.') {
        if let Some(root) = attributes.get(&path[..dot]) {
            return path[dot + 1..].split('.').try_fold(root, |value, step| match value {
                serde_json::Value::Object(object) => object.get(step),
                serde_json::Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            });
        }
        end = dot;
    }
    None
}

/// A parsed template: literal text and macros, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Lit(String),
    Macro(Macro),
}

pub(crate) type Template = Vec<Piece>;

/// Parses `text` into pieces. The error names the offending macro or brace.
pub(crate) fn parse(text: &str) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        lit.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            lit.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            lit.push('}');
            rest = after;
        } else if let Some(after) = tail.strip_prefix('}') {
            lit.push('}');
            rest = after;
        } else {
            let inner = &tail[1..];
            let Some(end) = inner.find(['{', '}']).filter(|&e| inner.as_bytes()[e] == b'}') else {
                return Err(format!("unclosed '{{' in {text:?} (write '{{{{' for a literal brace)"));
            };
            let name = inner[..end].trim();
            let m = Macro::parse(name).ok_or_else(|| format!("unknown macro {{{name}}} (known: {KNOWN_MACROS})"))?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Macro(m));
            rest = &inner[end + 1..];
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

pub(crate) fn has_macros(template: &Template) -> bool {
    template.iter().any(|p| matches!(p, Piece::Macro(_)))
}

/// Renders pieces, passing each value through `encode` (literals are copied as they are).
pub(crate) fn render_with(
    template: &Template,
    click: &ClickForDelivery,
    mut encode: impl FnMut(&str, &mut String),
) -> String {
    let mut out = String::new();
    for piece in template {
        match piece {
            Piece::Lit(text) => out.push_str(text),
            Piece::Macro(m) => encode(&m.value(click), &mut out),
        }
    }
    out
}

/// The text of a template without macros.
pub(crate) fn render_static(template: &Template) -> String {
    template
        .iter()
        .map(|p| match p {
            Piece::Lit(text) => text.as_str(),
            Piece::Macro(_) => "",
        })
        .collect()
}

/// Renders pieces with values as they are.
pub(crate) fn render(template: &Template, click: &ClickForDelivery) -> String {
    render_with(template, click, |v, out| out.push_str(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macros_literals_and_escapes() {
        assert_eq!(
            parse("a{click_id}b{{c}}d}e{ attr.tier }").unwrap(),
            vec![
                Piece::Lit("a".into()),
                Piece::Macro(Macro::ClickId),
                Piece::Lit("b{c}d}e".into()),
                Piece::Macro(Macro::Attr("tier".into())),
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert!(parse("{nope}").unwrap_err().contains("unknown macro {nope}"));
        assert!(parse("{attr.}").unwrap_err().contains("unknown macro"));
        assert!(parse("x{click_id").unwrap_err().contains("unclosed"));
        assert!(parse("x{click_{id}}").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn attribute_paths_reach_into_nested_values() {
        let attributes = serde_json::json!({"extra": {"k": [1, 2], "s": "x"}, "a.b": "dotted", "tier": "gold"});
        let attributes = attributes.as_object().unwrap();
        let at = |path: &str| attribute(attributes, path).map(|v| v.to_string());
        assert_eq!(at("extra").as_deref(), Some(r#"{"k":[1,2],"s":"x"}"#));
        assert_eq!(at("extra.k").as_deref(), Some("[1,2]"));
        assert_eq!(at("extra.k.1").as_deref(), Some("2"));
        assert_eq!(at("extra.s").as_deref(), Some(r#""x""#));
        assert_eq!(at("a.b").as_deref(), Some(r#""dotted""#), "an attribute named with a dot");
        assert_eq!(at("extra.k.5"), None);
        assert_eq!(at("extra.nope"), None);
        assert_eq!(at("tier.x"), None);
        assert_eq!(at("missing.k"), None);
    }
}
