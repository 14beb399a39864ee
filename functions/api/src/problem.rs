//! Errors as JSON problem details (RFC 9457, `application/problem+json`): a status, a short title that names the
//! kind of problem, a detail for this occurrence and, for invalid input, the list of fields and what is wrong with
//! each. Causes a client cannot act on (the database's) go to the log, never to the client.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use clickpacer::domain::FieldError;
use clickpacer::postgres::DbError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    /// `about:blank`: the status and title say what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// For 422 (and for a body that does not fit the schema): each invalid field and what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The request cannot be read: bad JSON, a bad query parameter or header.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, detail)
    }

    /// The request clashes with the resource's state (it exists already, it is archived).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    /// `If-Match` named a version the resource has moved on from.
    pub fn stale(current: i64) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            format!("it changed since that version; it is at version {current}: read it again"),
        )
    }

    /// A change was sent without `If-Match`.
    pub fn precondition_required() -> Self {
        Self::new(
            StatusCode::PRECONDITION_REQUIRED,
            "send If-Match with the version (ETag) the change was made from, so no one else's change is lost",
        )
    }

    /// Readable, but not acceptable: each field and why.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Self { errors, ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail) }
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; the cause is in the API's log")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, [(header::CONTENT_TYPE, "application/problem+json")], Json(self)).into_response()
    }
}

impl From<DbError> for Problem {
    fn from(e: DbError) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::internal()
    }
}

impl From<clickpacer::aws::AwsError> for Problem {
    fn from(e: clickpacer::aws::AwsError) -> Self {
        tracing::error!(operation = e.operation, error = %e.message, "request failed");
        Self::internal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_status_and_fields() {
        let p = Problem::invalid(vec![FieldError::new("time_zone", "unknown")]);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "about:blank", "title": "Unprocessable Entity", "status": 422,
                "detail": "time_zone: unknown", "errors": [{"field": "time_zone", "message": "unknown"}]})
        );
        assert!(serde_json::to_value(Problem::not_found("x")).unwrap().get("errors").is_none());
    }
}
