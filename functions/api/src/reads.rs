//! Read-only views: health, partners, reconciliation, a campaign's pacing days.

use axum::extract::{Path, State};
use axum::{Json, Router, routing};
use clickpacer::domain::Partner;
use clickpacer::postgres::{bridge, campaigns, partners, reports};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", routing::get(health))
        .route("/partners", routing::get(list_partners))
        .route("/reconciliation", routing::get(reconciliation))
        .route("/campaigns/{campaign_id}/pacing", routing::get(pacing))
}

/// `{"status": "ok", "events_waiting": n}` when the database answers.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Object)))]
pub async fn health(State(app): State<AppState>) -> Result<Json<Value>, Problem> {
    let client = app.client().await?;
    Ok(Json(json!({ "status": "ok", "events_waiting": bridge::outbox_depth(&**client).await? })))
}

/// A partner as the API shows it. Signing secrets and header values (which often carry credentials) are
/// write-only: only whether they are set is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerView {
    pub partner_id: String,
    pub name: String,
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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderView {
    pub name: String,
    pub value_set: bool,
}

impl From<&Partner> for PartnerView {
    fn from(p: &Partner) -> Self {
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
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerList {
    pub partners: Vec<PartnerView>,
}

/// Every partner's configuration, without its secrets.
#[utoipa::path(get, path = "/partners", tag = "partners", responses((status = 200, body = PartnerList)))]
pub async fn list_partners(State(app): State<AppState>) -> Result<Json<PartnerList>, Problem> {
    let client = app.client().await?;
    let partners = partners::list(&**client).await?;
    Ok(Json(PartnerList { partners: partners.iter().map(PartnerView::from).collect() }))
}

/// Per upload and per campaign: accepted = delivered + dead + cancelled + pending, and whether that holds.
#[utoipa::path(get, path = "/reconciliation", tag = "system", responses((status = 200, body = Object)))]
pub async fn reconciliation(State(app): State<AppState>) -> Result<Json<Value>, Problem> {
    let client = app.client().await?;
    let uploads = reports::uploads(&**client).await?;
    let campaigns = reports::campaigns(&**client).await?;
    let holds = uploads.iter().all(|u| u.holds()) && campaigns.iter().all(|c| c.fates.holds());
    Ok(Json(json!({ "holds": holds, "uploads": uploads, "campaigns": campaigns })))
}

/// The campaign's last 30 local days: released, delivered, failed, reserved and spent.
#[utoipa::path(get, path = "/campaigns/{campaign_id}/pacing", tag = "campaigns",
    params(("campaign_id" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn pacing(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, Problem> {
    let id = crate::campaigns::campaign_id(id)?;
    let client = app.client().await?;
    let Some(campaign) = campaigns::get(&**client, &id).await? else { return Err(crate::campaigns::unknown(&id)) };
    let days = reports::pacing_days(&**client, id.as_str(), 30).await?;
    Ok(Json(json!({ "campaign": campaign, "days": days })))
}
