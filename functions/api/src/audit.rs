//! The audit trail of campaigns and partners: every change with who made it (the caller's subject), when, and the
//! entity before and after, recorded in the change's own transaction; listed newest first.

use axum::extract::{Path, State};
use axum::{Json, Router, routing};
use clickpacer::domain::CampaignSpec;
use clickpacer::postgres::audit::{self, Entity, Record};
use clickpacer::postgres::campaigns::StoredCampaign;
use clickpacer::postgres::partners::StoredPartner;
use clickpacer::postgres::{DbError, campaigns, partners};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{QueryParams, id_cursor, page_limit};
use crate::partners::PartnerView;
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/campaigns/{campaign_id}/audit", routing::get(campaign_trail))
        .route("/partners/{partner_id}/audit", routing::get(partner_trail))
}

/// A campaign as the trail keeps it: its configuration, status and version.
pub fn campaign_snapshot(stored: &StoredCampaign) -> Value {
    let mut value = serde_json::to_value(CampaignSpec::from(&stored.campaign)).unwrap_or_default();
    if let Value::Object(map) = &mut value {
        map.insert("status".into(), Value::from(stored.campaign.status.as_str()));
        map.insert("version".into(), Value::from(stored.version));
    }
    value
}

/// A partner as the trail keeps it: its view, which never holds its secrets.
pub fn partner_snapshot(stored: &StoredPartner) -> Value {
    let mut value = serde_json::to_value(PartnerView::from(stored)).unwrap_or_default();
    if let Value::Object(map) = &mut value {
        map.remove("created_at");
        map.remove("updated_at");
    }
    value
}

/// Records `caller`'s change of an entity (in the transaction `db` when it is one).
pub async fn record(
    db: &impl tokio_postgres::GenericClient,
    caller: &Caller,
    entity: Entity,
    entity_id: &str,
    action: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), DbError> {
    let change = audit::Change { actor: &caller.subject, entity, entity_id, action, before, after };
    audit::record(db, &change).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrailParams {
    /// 1-200, 50 by default.
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Trail {
    pub items: Vec<Record>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A campaign's changes, newest first.
#[utoipa::path(get, path = "/campaigns/{campaign_id}/audit", tag = "campaigns",
    params(("campaign_id" = String, Path), TrailParams),
    responses((status = 200, body = Trail), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn campaign_trail(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<TrailParams>,
) -> Result<Json<Trail>, Problem> {
    let id = crate::campaigns::campaign_id(id)?;
    let client = app.client().await?;
    if campaigns::get(&**client, &id).await?.is_none() {
        return Err(crate::campaigns::unknown(&id));
    }
    trail(&**client, Entity::Campaign, id.as_str(), p).await
}

/// A partner's changes, newest first.
#[utoipa::path(get, path = "/partners/{partner_id}/audit", tag = "partners",
    params(("partner_id" = String, Path), TrailParams),
    responses((status = 200, body = Trail), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn partner_trail(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<TrailParams>,
) -> Result<Json<Trail>, Problem> {
    let id = crate::partners::partner_id(id)?;
    let client = app.client().await?;
    if partners::get(&**client, &id).await?.is_none() {
        return Err(crate::partners::unknown(&id));
    }
    trail(&**client, Entity::Partner, id.as_str(), p).await
}

async fn trail(
    db: &impl tokio_postgres::GenericClient,
    entity: Entity,
    id: &str,
    p: TrailParams,
) -> Result<Json<Trail>, Problem> {
    let limit = page_limit(p.limit)?;
    let before = id_cursor(p.cursor)?;
    let (items, next) = audit::page(db, entity, id, before, limit).await?;
    Ok(Json(Trail { items, next_cursor: next.map(|id| id.to_string()) }))
}
