//! Batches: searched by campaign, upload, state and due time, newest first.

use axum::extract::State;
use axum::{Json, Router, routing};
use chrono::{DateTime, Utc};
use clickpacer::domain::{BatchState, CampaignId};
use clickpacer::postgres::batch_list::{self, BatchFilter, BatchSummary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{QueryParams, id_cursor, page_limit};
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new().route("/batches", routing::get(list))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    campaign_id: Option<String>,
    upload_id: Option<i64>,
    /// `pending`, `claimed`, `queued`, `delivered`, `partially_failed`, `dead` or `cancelled`.
    state: Option<String>,
    /// Due at or after this instant (RFC 3339).
    due_from: Option<String>,
    /// Due before this instant (RFC 3339).
    due_until: Option<String>,
    /// 1-200, 50 by default.
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    pub items: Vec<BatchSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Batches, newest first.
#[utoipa::path(get, path = "/batches", tag = "batches", params(ListParams),
    responses((status = 200, body = BatchList), (status = 400, body = Problem)))]
pub async fn list(
    State(app): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Json<BatchList>, Problem> {
    let campaign_id = p
        .campaign_id
        .map(|c| CampaignId::parse(c).map_err(|e| Problem::malformed(format!("campaign_id: {e}"))))
        .transpose()?;
    let state = p
        .state
        .as_deref()
        .map(|s| {
            BatchState::parse(s).ok_or_else(|| {
                let names: Vec<&str> = BatchState::ALL.iter().map(|s| s.as_str()).collect();
                Problem::malformed(format!("state {s:?} is not one of {}", names.join(", ")))
            })
        })
        .transpose()?;
    let instant = |name: &str, value: Option<String>| -> Result<Option<DateTime<Utc>>, Problem> {
        value
            .map(|v| {
                DateTime::parse_from_rfc3339(&v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| Problem::malformed(format!("{name} {v:?} is not an RFC 3339 instant: {e}")))
            })
            .transpose()
    };
    let due_from = instant("due_from", p.due_from)?;
    let due_until = instant("due_until", p.due_until)?;
    let limit = page_limit(p.limit)?;
    let before = id_cursor(p.cursor)?;
    let filter = BatchFilter { campaign_id, upload_id: p.upload_id, state, due_from, due_until };
    let client = app.client().await?;
    let (items, next) = batch_list::page(&**client, &filter, before, limit).await?;
    Ok(Json(BatchList { items, next_cursor: next.map(|id| id.to_string()) }))
}
