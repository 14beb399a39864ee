//! Read-only views: reconciliation (and the route of [`crate::health`]).

use axum::extract::State;
use axum::{Json, Router, routing};
use clickpacer::postgres::reports;
use serde_json::{Value, json};

use crate::AppState;
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", routing::get(crate::health::health))
        .route("/reconciliation", routing::get(reconciliation))
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
