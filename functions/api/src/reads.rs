//! Read-only views: reconciliation, a campaign's pacing days (and the route of [`crate::health`]).

use axum::extract::{Path, State};
use axum::{Json, Router, routing};
use clickpacer::postgres::{campaigns, reports};
use serde_json::{Value, json};

use crate::AppState;
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", routing::get(crate::health::health))
        .route("/reconciliation", routing::get(reconciliation))
        .route("/campaigns/{campaign_id}/pacing", routing::get(pacing))
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
