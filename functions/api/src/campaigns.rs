//! Campaigns: create, read, list, replace (with `If-Match`), pause, resume, archive, and cancel their pending
//! clicks.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router, routing};
use chrono::{DateTime, Utc};
use clickpacer::domain::{CampaignId, CampaignSpec, CampaignStatus, FieldError, PartnerId};
use clickpacer::pacing::{DeliveryStatus, PendingWork, delivery_status};
use clickpacer::postgres::audit::Entity;
use clickpacer::postgres::campaign_list::{self, CampaignFilter, CampaignSort, Cursor};
use clickpacer::postgres::campaigns::{self, Change, StoredCampaign};
use clickpacer::postgres::cancel::{self, Cancellation};
use clickpacer::postgres::{DbError, partners};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit;
use crate::auth::Caller;
use crate::extract::{IfMatch, JsonBody, QueryParams, etag, page_limit, replacing};
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/campaigns", routing::get(list).post(create))
        .route("/campaigns/{campaign_id}", routing::get(read).put(replace))
        .route("/campaigns/{campaign_id}/pause", routing::post(pause))
        .route("/campaigns/{campaign_id}/resume", routing::post(resume))
        .route("/campaigns/{campaign_id}/archive", routing::post(archive))
        .route("/campaigns/{campaign_id}/cancel-pending", routing::post(cancel_pending))
}

/// A campaign as the API shows it: its configuration (what `PUT` takes), its status, whether it is delivering
/// now and why not, and its version.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    #[serde(flatten)]
    pub spec: CampaignSpec,
    pub status: CampaignStatus,
    pub delivery: DeliveryStatus,
    /// Bumped by every change; send it back in `If-Match` (it is also the `ETag`).
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CampaignView {
    fn new(s: &StoredCampaign, work: &PendingWork, now: DateTime<Utc>) -> Self {
        Self {
            spec: CampaignSpec::from(&s.campaign),
            status: s.campaign.status,
            delivery: delivery_status(&s.campaign, work, now),
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The views of `stored` campaigns, with their delivery status read from their batches now.
async fn views(db: &impl GenericClient, stored: &[&StoredCampaign]) -> Result<Vec<CampaignView>, Problem> {
    let ids: Vec<&str> = stored.iter().map(|s| s.campaign.campaign_id.as_str()).collect();
    let work = campaigns::pending_work(db, &ids).await?;
    let now = Utc::now();
    Ok(stored
        .iter()
        .map(|s| {
            CampaignView::new(s, work.get(s.campaign.campaign_id.as_str()).unwrap_or(&PendingWork::default()), now)
        })
        .collect())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignList {
    pub items: Vec<CampaignView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `active`, `paused` or `archived`.
    status: Option<String>,
    partner_id: Option<String>,
    /// Found in the campaign's id or name, ignoring case.
    q: Option<String>,
    /// `campaign_id` (the default), `name`, `created_at` or `updated_at`.
    sort: Option<String>,
    /// `asc` (the default) or `desc`.
    order: Option<String>,
    /// 1-200, 50 by default.
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

/// Lists campaigns a page at a time.
#[utoipa::path(get, path = "/campaigns", tag = "campaigns", params(ListParams),
    responses((status = 200, body = CampaignList), (status = 400, body = Problem)))]
pub async fn list(State(app): State<AppState>, QueryParams(p): QueryParams<ListParams>) -> Result<Response, Problem> {
    let status = p
        .status
        .as_deref()
        .map(|s| CampaignStatus::parse(s).ok_or_else(|| malformed("status", s, "active, paused, archived")))
        .transpose()?;
    let partner_id = p
        .partner_id
        .map(|s| PartnerId::parse(s).map_err(|e| Problem::malformed(format!("partner_id: {e}"))))
        .transpose()?;
    let sort = p
        .sort
        .as_deref()
        .map(|s| CampaignSort::parse(s).ok_or_else(|| malformed("sort", s, &CampaignSort::NAMES.join(", "))))
        .transpose()?
        .unwrap_or_default();
    let descending = match p.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(malformed("order", other, "asc, desc")),
    };
    let limit = page_limit(p.limit)?;
    let cursor = p
        .cursor
        .map(|c| Cursor::decode(&c).ok_or_else(|| Problem::malformed("cursor is not one this API gave")))
        .transpose()?;
    let filter = CampaignFilter { status, partner_id, text: p.q.filter(|q| !q.is_empty()) };
    let client = app.client().await?;
    let page = campaign_list::page(&**client, &filter, sort, descending, cursor.as_ref(), limit).await?;
    let body = CampaignList {
        items: views(&**client, &page.items.iter().collect::<Vec<_>>()).await?,
        next_cursor: page.next.map(|c| c.encode()),
    };
    Ok(Json(body).into_response())
}

fn malformed(field: &str, value: &str, allowed: &str) -> Problem {
    Problem::malformed(format!("{field} {value:?} is not one of {allowed}"))
}

/// Creates a campaign. It starts active.
#[utoipa::path(post, path = "/campaigns", tag = "campaigns", request_body = CampaignSpec,
    responses((status = 201, body = CampaignView, headers(("ETag" = String), ("Location" = String))),
        (status = 400, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(spec): JsonBody<CampaignSpec>,
) -> Result<Response, Problem> {
    let mut client = app.client().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let campaign = checked(&*tx, &spec, CampaignStatus::Active).await?;
    let Some(stored) = campaigns::create(&*tx, &campaign).await? else {
        return Err(Problem::conflict(format!("campaign {:?} exists already", spec.campaign_id)));
    };
    let after = Some(audit::campaign_snapshot(&stored));
    audit::record(&*tx, &caller, Entity::Campaign, &spec.campaign_id, "create", None, after).await?;
    tx.commit().await.map_err(DbError::from)?;
    let mut response = respond(&**client, StatusCode::CREATED, &stored).await?;
    if let Ok(value) = HeaderValue::from_str(&format!("/campaigns/{}", stored.campaign.campaign_id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// One campaign.
#[utoipa::path(get, path = "/campaigns/{campaign_id}", tag = "campaigns",
    params(("campaign_id" = String, Path)),
    responses((status = 200, body = CampaignView, headers(("ETag" = String))),
        (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn read(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = campaign_id(id)?;
    let client = app.client().await?;
    match campaigns::get_stored(&**client, &id).await? {
        Some(stored) => respond(&**client, StatusCode::OK, &stored).await,
        None => Err(unknown(&id)),
    }
}

/// Replaces a campaign's configuration. `If-Match` must carry the version it was made from; its status is kept.
/// Deferred batches are woken, so relaxed rules take effect at the next pacer run.
#[utoipa::path(put, path = "/campaigns/{campaign_id}", tag = "campaigns", request_body = CampaignSpec,
    params(("campaign_id" = String, Path), ("If-Match" = String, Header, description = "the campaign's ETag")),
    responses((status = 200, body = CampaignView, headers(("ETag" = String))),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem), (status = 428, body = Problem)))]
pub async fn replace(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    if_match: IfMatch,
    JsonBody(spec): JsonBody<CampaignSpec>,
) -> Result<Response, Problem> {
    let id = campaign_id(id)?;
    replacing(if_match, "campaign_id", &spec.campaign_id, id.as_str())?;
    let mut client = app.client().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let current = at_version(&*tx, &id, if_match).await?;
    let campaign = checked(&*tx, &spec, current.campaign.status).await?;
    // The version read above is the one replaced: a change made in between makes this one stale, not lost.
    let change = campaigns::replace(&*tx, &campaign, Some(current.version), Utc::now()).await?;
    let stored = committed(tx, &caller, "replace", &current, change, &id).await?;
    respond(&**client, StatusCode::OK, &stored).await
}

/// Pauses a campaign: nothing more is released until it is resumed.
#[utoipa::path(post, path = "/campaigns/{campaign_id}/pause", tag = "campaigns", params(("campaign_id" = String, Path),
    ("If-Match" = Option<String>, Header, description = "when given, the campaign's ETag")),
    responses((status = 200, body = CampaignView), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 412, body = Problem)))]
pub async fn pause(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
    if_match: IfMatch,
) -> Result<Response, Problem> {
    transition(state, caller, id, if_match, CampaignStatus::Paused).await
}

/// Resumes a paused campaign and wakes its deferred batches.
#[utoipa::path(post, path = "/campaigns/{campaign_id}/resume", tag = "campaigns", params(("campaign_id" = String, Path),
    ("If-Match" = Option<String>, Header, description = "when given, the campaign's ETag")),
    responses((status = 200, body = CampaignView), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 412, body = Problem)))]
pub async fn resume(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
    if_match: IfMatch,
) -> Result<Response, Problem> {
    transition(state, caller, id, if_match, CampaignStatus::Active).await
}

/// Archives a campaign for good: it releases nothing more and cannot be resumed.
#[utoipa::path(post, path = "/campaigns/{campaign_id}/archive", tag = "campaigns", params(("campaign_id" = String, Path),
    ("If-Match" = Option<String>, Header, description = "when given, the campaign's ETag")),
    responses((status = 200, body = CampaignView), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn archive(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
    if_match: IfMatch,
) -> Result<Response, Problem> {
    transition(state, caller, id, if_match, CampaignStatus::Archived).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CancelParams {
    /// Only this upload's pending clicks.
    upload_id: Option<i64>,
    /// `true`: change nothing, say what would be cancelled (the count a person confirms).
    #[serde(default)]
    preview: bool,
}

/// Cancels the campaign's pending clicks (all, or one upload's): they will not be delivered, and the
/// reconciliation counts them as cancelled. Batches a pacer or bridge holds right now finish as they go; the
/// answer counts them.
#[utoipa::path(post, path = "/campaigns/{campaign_id}/cancel-pending", tag = "campaigns",
    params(("campaign_id" = String, Path), CancelParams),
    responses((status = 200, body = Cancellation), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn cancel_pending(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<CancelParams>,
) -> Result<Json<Cancellation>, Problem> {
    let id = campaign_id(id)?;
    let mut client = app.client().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    if campaigns::get(&*tx, &id).await?.is_none() {
        return Err(unknown(&id));
    }
    let cancelled = cancel::cancel_pending(&*tx, &id, p.upload_id, p.preview).await?;
    if !p.preview && cancelled.batches > 0 {
        let after = serde_json::json!({"upload_id": p.upload_id, "cancelled": cancelled});
        audit::record(&*tx, &caller, Entity::Campaign, id.as_str(), "cancel_pending", None, Some(after)).await?;
    }
    tx.commit().await.map_err(DbError::from)?;
    Ok(Json(cancelled))
}

async fn transition(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    if_match: IfMatch,
    to: CampaignStatus,
) -> Result<Response, Problem> {
    let id = campaign_id(id)?;
    let mut client = app.client().await?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let current = at_version(&*tx, &id, if_match).await?;
    current.campaign.status.transition(to).map_err(Problem::conflict)?;
    if current.campaign.status == to {
        drop(tx);
        return respond(&**client, StatusCode::OK, &current).await;
    }
    let action = match to {
        CampaignStatus::Active => "resume",
        CampaignStatus::Paused => "pause",
        CampaignStatus::Archived => "archive",
    };
    let change = campaigns::change_status(&*tx, &id, to, Some(current.version), Utc::now()).await?;
    let stored = committed(tx, &caller, action, &current, change, &id).await?;
    respond(&**client, StatusCode::OK, &stored).await
}

/// Ends a change's transaction: a change made is recorded in the audit trail (before and after) and committed;
/// a stale or missing campaign is the caller's error, and nothing is written.
async fn committed(
    tx: deadpool_postgres::Transaction<'_>,
    caller: &Caller,
    action: &str,
    before: &StoredCampaign,
    change: Change,
    id: &CampaignId,
) -> Result<StoredCampaign, Problem> {
    match change {
        Change::Done(stored) => {
            let (before, after) = (audit::campaign_snapshot(before), audit::campaign_snapshot(&stored));
            audit::record(&*tx, caller, Entity::Campaign, id.as_str(), action, Some(before), Some(after)).await?;
            tx.commit().await.map_err(DbError::from)?;
            Ok(*stored)
        }
        Change::Stale { current } => Err(Problem::stale(current)),
        Change::Missing => Err(unknown(id)),
    }
}

/// The campaign as stored, if it exists and is at the version `If-Match` names (when it names one).
async fn at_version(db: &impl GenericClient, id: &CampaignId, if_match: IfMatch) -> Result<StoredCampaign, Problem> {
    let Some(current) = campaigns::get_stored(db, id).await? else { return Err(unknown(id)) };
    match if_match.expected() {
        Some(expected) if expected != current.version => Err(Problem::stale(current.version)),
        _ => Ok(current),
    }
}

/// The campaign a spec describes, once its fields and its partner check out; otherwise every problem found.
async fn checked(
    db: &impl GenericClient,
    spec: &CampaignSpec,
    status: CampaignStatus,
) -> Result<clickpacer::domain::Campaign, Problem> {
    let validated = spec.validate(status);
    let mut errors = validated.as_ref().err().cloned().unwrap_or_default();
    if let Ok(partner_id) = PartnerId::parse(spec.partner_id.clone()) {
        match partners::get(db, &partner_id).await? {
            Some(p) if p.enabled => {}
            Some(_) => {
                errors.push(FieldError::new("partner_id", format!("partner {:?} is disabled", partner_id.as_str())))
            }
            None => errors.push(FieldError::new("partner_id", format!("no partner {:?}", partner_id.as_str()))),
        }
    }
    match validated {
        Ok(campaign) if errors.is_empty() => Ok(campaign),
        _ => Err(Problem::invalid(errors)),
    }
}

async fn respond(db: &impl GenericClient, status: StatusCode, stored: &StoredCampaign) -> Result<Response, Problem> {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&etag(stored.version)) {
        headers.insert(header::ETAG, value);
    }
    let view = views(db, &[stored]).await?.pop().ok_or_else(Problem::internal)?;
    Ok((status, headers, Json(view)).into_response())
}

pub(crate) fn campaign_id(id: String) -> Result<CampaignId, Problem> {
    CampaignId::parse(id).map_err(|e| Problem::malformed(e.to_string()))
}

pub(crate) fn unknown(id: &CampaignId) -> Problem {
    Problem::not_found(format!("no campaign {:?}", id.as_str()))
}
