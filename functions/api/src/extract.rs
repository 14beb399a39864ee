//! Reading requests: JSON bodies and query strings whose problems come back as problem details naming the field,
//! and the `If-Match` precondition.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use bytes::Bytes;
use clickpacer::domain::FieldError;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A JSON body. Broken JSON is a 400; JSON of the wrong shape (an unknown field, a string where a number
/// belongs) is a 422 naming the field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes =
            Bytes::from_request(req, state).await.map_err(|e| Problem::malformed(format!("unreadable body: {e}")))?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            let field = if path == "." { "body".to_string() } else { path };
            Problem::invalid(vec![FieldError::new(field, strip_position(&inner.to_string()))])
        } else {
            Problem::malformed(format!("the body is not valid JSON: {inner}"))
        }
    })
}

/// serde_json appends " at line 1 column 42" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    message.split(" at line ").next().unwrap_or(message).to_string()
}

/// A query string read into `T`; an unknown or ill-typed parameter is a 400 naming it.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| Problem::malformed(format!("query string: {}", e.into_inner())))
    }
}

/// The most items one page may hold, and how many it holds when the request does not say.
pub const MAX_PAGE: u32 = 200;
pub const DEFAULT_PAGE: u32 = 50;

/// A page's size from its `limit` parameter: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
pub fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::malformed(format!("limit must be from 1 to {MAX_PAGE} (got {limit})")))
    }
}

/// A `cursor` parameter that is an id from the list's own `next_cursor` (lists keyed on an id, newest first).
pub fn id_cursor(cursor: Option<String>) -> Result<Option<i64>, Problem> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|&id| id > 0)
                .ok_or_else(|| Problem::malformed("cursor is not one this API gave"))
        })
        .transpose()
}

/// The version a change was made from, from `If-Match` (`"3"`, `W/"3"`, or `*` for any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    Absent,
    Any,
    Version(i64),
}

impl IfMatch {
    /// The version to compare with, `None` to accept any.
    pub fn expected(self) -> Option<i64> {
        match self {
            Self::Version(v) => Some(v),
            Self::Absent | Self::Any => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else { return Ok(Self::Absent) };
        let text = value.to_str().map_err(|_| Problem::malformed("If-Match is not ASCII"))?.trim();
        if text == "*" {
            return Ok(Self::Any);
        }
        let tag = text.strip_prefix("W/").unwrap_or(text);
        tag.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse::<i64>().ok())
            .map(Self::Version)
            .ok_or_else(|| Problem::malformed(format!("If-Match {text:?} is not an ETag this API gave, such as \"3\"")))
    }
}

/// What every replace (`PUT`) checks before reading anything: it names the version it was made from, and the
/// body's id (`field`) is the one the path names, for ids never change.
pub fn replacing(if_match: IfMatch, field: &str, body_id: &str, path_id: &str) -> Result<(), Problem> {
    if if_match == IfMatch::Absent {
        return Err(Problem::precondition_required());
    }
    if body_id != path_id {
        let message = format!("is {body_id:?} but the path names {path_id:?}; an id cannot change");
        return Err(Problem::invalid(vec![FieldError::new(field, message)]));
    }
    Ok(())
}

/// The ETag of a version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        count: u32,
    }

    #[test]
    fn json_problems_say_which_field() {
        let p = parse_json::<Body>(br#"{"count": "five"}"#).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].field, "count");
        assert!(p.errors[0].message.starts_with("invalid type: string \"five\""), "{p:?}");
        assert_eq!(parse_json::<Body>(b"{\"count\": ").unwrap_err().status, 400);
        let p = parse_json::<Body>(br#"{"count": 1, "cuont": 2}"#).unwrap_err();
        assert!(p.errors[0].message.contains("unknown field `cuont`"), "{p:?}");
    }
}
