//! Partners: create, read, list, replace (with `If-Match`), enable, disable. A partner is checked field by field
//! when it is saved ([`validate_partner`]: templates, the endpoint against the SSRF policy, headers, numbers, a
//! sample click rendered), so one the bridge could not deliver to is refused with reasons instead of
//! dead-lettering every click. Signing secrets and header values are write-only.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router, routing};
use chrono::{DateTime, Utc};
use clickpacer::delivery::validate_partner;
use clickpacer::domain::{FieldError, Partner, PartnerId, PartnerSpec};
use clickpacer::postgres::DbError;
use clickpacer::postgres::audit::Entity;
use clickpacer::postgres::partners::{self, Change, StoredPartner};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::audit;
use crate::auth::Caller;
use crate::extract::{IfMatch, JsonBody, etag, replacing};
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/partners", routing::get(list).post(create))
        .route("/partners/{partner_id}", routing::get(read).put(replace))
        .route("/partners/{partner_id}/enable", routing::post(enable))
        .route("/partners/{partner_id}/disable", routing::post(disable))
        .route("/partners/{partner_id}/test-delivery", routing::post(test_delivery))
}

/// A partner as the API shows it. Signing secrets and header values (which often carry credentials) are
/// write-only: only whether they are set is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerView {
    pub partner_id: String,
    pub name: String,
    /// A disabled partner is sent nothing; its clicks wait.
    pub enabled: bool,
    /// `get`, `post_json` or `post_form`.
    pub delivery_format: String,
    pub endpoint_template: String,
    pub body_template: Option<String>,
    pub headers: Vec<HeaderView>,
    pub signing_secret_set: bool,
    pub success_body_match: Option<String>,
    pub timeout_ms: u32,
    pub rate_per_second: Option<u32>,
    pub max_concurrency: u32,
    pub max_attempts: u32,
    pub retry_base_ms: u32,
    pub retry_max_ms: u32,
    /// Bumped by every change; send it back in `If-Match` (it is also the `ETag`).
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderView {
    pub name: String,
    pub value_set: bool,
}

impl From<&StoredPartner> for PartnerView {
    fn from(s: &StoredPartner) -> Self {
        let p = &s.partner;
        Self {
            partner_id: p.partner_id.to_string(),
            name: p.name.clone(),
            enabled: p.enabled,
            delivery_format: p.delivery_format.as_str().to_owned(),
            endpoint_template: p.endpoint_template.clone(),
            body_template: p.body_template.clone(),
            headers: p
                .headers
                .iter()
                .map(|(name, value)| HeaderView { name: name.clone(), value_set: !value.is_empty() })
                .collect(),
            signing_secret_set: p.signing_secret.is_some(),
            success_body_match: p.success_body_match.clone(),
            timeout_ms: p.timeout_ms,
            rate_per_second: p.rate_per_second,
            max_concurrency: p.max_concurrency,
            max_attempts: p.max_attempts,
            retry_base_ms: p.retry_base_ms,
            retry_max_ms: p.retry_max_ms,
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerList {
    pub partners: Vec<PartnerView>,
}

/// Every partner, by id, without its secrets.
#[utoipa::path(get, path = "/partners", tag = "partners", responses((status = 200, body = PartnerList)))]
pub async fn list(State(app): State<AppState>) -> Result<Json<PartnerList>, Problem> {
    let client = app.client().await?;
    let partners = partners::list_stored(&**client).await?;
    Ok(Json(PartnerList { partners: partners.iter().map(PartnerView::from).collect() }))
}

/// Creates a partner. It starts enabled.
#[utoipa::path(post, path = "/partners", tag = "partners", request_body = PartnerSpec,
    responses((status = 201, body = PartnerView, headers(("ETag" = String), ("Location" = String))),
        (status = 400, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(spec): JsonBody<PartnerSpec>,
) -> Result<Response, Problem> {
    let partner = checked(&app, &spec, true, None)?;
    let mut client = app.client().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let Some(stored) = partners::create(&*tx, &partner).await? else {
        return Err(Problem::conflict(format!("partner {:?} exists already", spec.partner_id)));
    };
    let after = Some(audit::partner_snapshot(&stored));
    audit::record(&*tx, &caller, Entity::Partner, &spec.partner_id, "create", None, after).await?;
    tx.commit().await.map_err(DbError::from)?;
    let mut response = respond(StatusCode::CREATED, &stored);
    if let Ok(value) = HeaderValue::from_str(&format!("/partners/{}", stored.partner.partner_id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// One partner.
#[utoipa::path(get, path = "/partners/{partner_id}", tag = "partners", params(("partner_id" = String, Path)),
    responses((status = 200, body = PartnerView, headers(("ETag" = String))), (status = 400, body = Problem),
        (status = 404, body = Problem)))]
pub async fn read(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = partner_id(id)?;
    let client = app.client().await?;
    match partners::get_stored(&**client, &id).await? {
        Some(stored) => Ok(respond(StatusCode::OK, &stored)),
        None => Err(unknown(&id)),
    }
}

/// Replaces a partner's configuration. `If-Match` must carry the version it was made from; whether it is enabled
/// is kept, and so are its signing secret and header values where the body leaves them out.
#[utoipa::path(put, path = "/partners/{partner_id}", tag = "partners", request_body = PartnerSpec,
    params(("partner_id" = String, Path), ("If-Match" = String, Header, description = "the partner's ETag")),
    responses((status = 200, body = PartnerView, headers(("ETag" = String))),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem), (status = 428, body = Problem)))]
pub async fn replace(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    if_match: IfMatch,
    JsonBody(spec): JsonBody<PartnerSpec>,
) -> Result<Response, Problem> {
    let id = partner_id(id)?;
    replacing(if_match, "partner_id", &spec.partner_id, id.as_str())?;
    let mut client = app.client().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let Some(current) = partners::get_stored(&*tx, &id).await? else { return Err(unknown(&id)) };
    if let Some(expected) = if_match.expected()
        && expected != current.version
    {
        return Err(Problem::stale(current.version));
    }
    let partner = checked(&app, &spec, current.partner.enabled, Some(&current.partner))?;
    let change = partners::replace(&*tx, &partner, Some(current.version)).await?;
    committed(tx, &caller, "replace", &current, change, &id).await
}

/// Enables a partner: its waiting clicks are sent again.
#[utoipa::path(post, path = "/partners/{partner_id}/enable", tag = "partners", params(("partner_id" = String, Path),
    ("If-Match" = Option<String>, Header, description = "when given, the partner's ETag")),
    responses((status = 200, body = PartnerView), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn enable(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
    if_match: IfMatch,
) -> Result<Response, Problem> {
    set_enabled(state, caller, id, if_match, true).await
}

/// Disables a partner: nothing more is sent to it; its clicks wait (the bridge parks their messages).
#[utoipa::path(post, path = "/partners/{partner_id}/disable", tag = "partners", params(("partner_id" = String, Path),
    ("If-Match" = Option<String>, Header, description = "when given, the partner's ETag")),
    responses((status = 200, body = PartnerView), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn disable(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
    if_match: IfMatch,
) -> Result<Response, Problem> {
    set_enabled(state, caller, id, if_match, false).await
}

async fn set_enabled(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    if_match: IfMatch,
    enabled: bool,
) -> Result<Response, Problem> {
    let id = partner_id(id)?;
    let mut client = app.client().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let Some(current) = partners::get_stored(&*tx, &id).await? else { return Err(unknown(&id)) };
    let expected = if_match.expected().unwrap_or(current.version);
    let change = partners::set_enabled(&*tx, &id, enabled, Some(expected)).await?;
    committed(tx, &caller, if enabled { "enable" } else { "disable" }, &current, change, &id).await
}

/// The partner a spec describes, once its shape and [`validate_partner`] check out; otherwise every problem.
fn checked(app: &AppState, spec: &PartnerSpec, enabled: bool, stored: Option<&Partner>) -> Result<Partner, Problem> {
    let partner = spec.to_partner(enabled, stored).map_err(Problem::invalid)?;
    validate_partner(&partner, app.allow_private_partners).map_err(Problem::invalid)?;
    Ok(partner)
}

/// Ends a change's transaction: a change made is recorded in the audit trail (before and after, without
/// secrets) and committed; a stale or missing partner is the caller's error, and nothing is written.
async fn committed(
    tx: deadpool_postgres::Transaction<'_>,
    caller: &Caller,
    action: &str,
    before: &StoredPartner,
    change: Change,
    id: &PartnerId,
) -> Result<Response, Problem> {
    match change {
        Change::Done(stored) => {
            let (before, after) = (audit::partner_snapshot(before), audit::partner_snapshot(&stored));
            audit::record(&*tx, caller, Entity::Partner, id.as_str(), action, Some(before), Some(after)).await?;
            tx.commit().await.map_err(DbError::from)?;
            Ok(respond(StatusCode::OK, &stored))
        }
        Change::Stale { current } => Err(Problem::stale(current)),
        Change::Missing => Err(unknown(id)),
    }
}

fn respond(status: StatusCode, stored: &StoredPartner) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&etag(stored.version)) {
        headers.insert(header::ETAG, value);
    }
    (status, headers, Json(PartnerView::from(stored))).into_response()
}

pub(crate) fn partner_id(id: String) -> Result<PartnerId, Problem> {
    PartnerId::parse(id).map_err(|e| Problem::malformed(e.to_string()))
}

pub(crate) fn unknown(id: &PartnerId) -> Problem {
    Problem::not_found(format!("no partner {:?}", id.as_str()))
}

/// What a test delivery sent and what the partner answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestDelivery {
    pub request: SentRequest,
    /// The partner's answer, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// What the bridge would make of it: `delivered`, `retry` or `permanent`.
    pub outcome: &'static str,
    /// Why, in words (the status and body, a transport error, the address policy).
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SentRequest {
    pub method: String,
    pub url: String,
    /// Header names only: values may carry credentials.
    pub header_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Answer {
    pub status: u16,
    pub latency_ms: u64,
    /// The first 2 KiB of the body, as text.
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

/// Sends one synthetic click (every field set, a nested attribute, an idempotency key starting `cp-test-`) to the
/// partner exactly as the bridge would (templates, headers, signature, timeout, address policy), and shows the
/// request and the answer. Nothing is recorded as a delivery; the partner's pacing is left alone.
#[utoipa::path(post, path = "/partners/{partner_id}/test-delivery", tag = "partners",
    params(("partner_id" = String, Path)),
    responses((status = 200, body = TestDelivery), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub async fn test_delivery(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<TestDelivery>, Problem> {
    use bridge::Transport;
    use clickpacer::delivery::{Outcome, classify, classify_transport, render_request, sample_click};

    let id = partner_id(id)?;
    let partner = {
        let client = app.client().await?;
        partners::get(&**client, &id).await?.ok_or_else(|| unknown(&id))?
    };
    let mut click = sample_click();
    click.idempotency_key = format!("cp-test-{}", uuid::Uuid::new_v4().simple());
    let request = render_request(&partner, &click, Utc::now())
        .map_err(|e| Problem::invalid(vec![FieldError::new("endpoint_template", e.to_string())]))?;
    let sent = SentRequest {
        method: request.method.to_string(),
        url: request.url.to_string(),
        header_names: request.headers.iter().map(|(name, _)| name.clone()).collect(),
        body: request.body.as_ref().map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned()),
    };
    let timeout = std::time::Duration::from_millis(u64::from(partner.timeout_ms));
    let (answer, outcome) = match app.transport.send(&request, timeout).await {
        Ok(answer) => {
            let outcome = classify(
                answer.status,
                &answer.body,
                answer.retry_after.as_deref(),
                partner.success_body_match.as_deref(),
                Utc::now(),
            );
            let shown = Answer {
                status: answer.status,
                latency_ms: u64::try_from(answer.latency.as_millis()).unwrap_or(u64::MAX),
                body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(2048)]).into_owned(),
                retry_after: answer.retry_after.clone(),
            };
            (Some(shown), outcome)
        }
        Err((error, _)) => (None, classify_transport(&error)),
    };
    let (outcome, detail) = match outcome {
        Outcome::Delivered => ("delivered", "the partner accepted the click".to_owned()),
        Outcome::Retry { reason, .. } => ("retry", reason),
        Outcome::Permanent(reason) => ("permanent", reason),
    };
    Ok(Json(TestDelivery { request: sent, answer, outcome, detail }))
}
