//! Dead letters: dead clicks with the partner's last answer, grouped by reason, and their replay (a count first,
//! then the replay itself). A replay sends only the clicks that are dead, once each, under the day's caps and
//! budgets; clicks already delivered are never sent again.

use axum::extract::State;
use axum::{Extension, Json, Router, routing};
use clickpacer::domain::{CampaignId, FieldError, PartnerId};
use clickpacer::postgres::audit::Entity;
use clickpacer::postgres::campaigns;
use clickpacer::postgres::dead_letters::{self, DeadClick, DeadFilter, DeadReason};
use clickpacer::postgres::replay::{self, ReplayScope, ReplaySummary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit;
use crate::auth::Caller;
use crate::extract::{JsonBody, QueryParams, id_cursor, page_limit};
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dead-letters", routing::get(list))
        .route("/dead-letters/reasons", routing::get(reasons))
        .route("/dead-letters/replay", routing::post(replay))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    campaign_id: Option<String>,
    partner_id: Option<String>,
    /// 1-200, 50 by default (list only).
    limit: Option<u32>,
    /// The `next_cursor` of the page before (list only).
    cursor: Option<String>,
}

impl ListParams {
    fn filter(&self) -> Result<DeadFilter, Problem> {
        let campaign_id = self
            .campaign_id
            .clone()
            .map(|c| CampaignId::parse(c).map_err(|e| Problem::malformed(format!("campaign_id: {e}"))))
            .transpose()?;
        let partner_id = self
            .partner_id
            .clone()
            .map(|p| PartnerId::parse(p).map_err(|e| Problem::malformed(format!("partner_id: {e}"))))
            .transpose()?;
        Ok(DeadFilter { campaign_id, partner_id })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadClickList {
    pub items: Vec<DeadClick>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadReasons {
    pub groups: Vec<DeadReason>,
}

/// Dead clicks, newest first.
#[utoipa::path(get, path = "/dead-letters", tag = "dead letters", params(ListParams),
    responses((status = 200, body = DeadClickList), (status = 400, body = Problem)))]
pub async fn list(
    State(app): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Json<DeadClickList>, Problem> {
    let filter = p.filter()?;
    let limit = page_limit(p.limit)?;
    let before = id_cursor(p.cursor)?;
    let client = app.client().await?;
    let (items, next) = dead_letters::page(&**client, &filter, before, limit).await?;
    Ok(Json(DeadClickList { items, next_cursor: next.map(|id| id.to_string()) }))
}

/// Dead clicks grouped by partner, status and reason, largest group first, each with the batches a replay of
/// it reopens.
#[utoipa::path(get, path = "/dead-letters/reasons", tag = "dead letters", params(ListParams),
    responses((status = 200, body = DeadReasons), (status = 400, body = Problem)))]
pub async fn reasons(
    State(app): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Json<DeadReasons>, Problem> {
    let filter = p.filter()?;
    let client = app.client().await?;
    Ok(Json(DeadReasons { groups: dead_letters::reasons(&**client, &filter).await? }))
}

/// Which dead clicks to replay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub campaign_id: String,
    /// Only these batches' dead clicks (e.g. a reason group's `batch_ids`); empty or absent: all the campaign's.
    #[serde(default)]
    pub batch_ids: Vec<i64>,
    /// `true`: change nothing, say how many batches and clicks a replay would reopen.
    #[serde(default)]
    pub preview: bool,
    /// Recorded with each replayed click (1-500 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Most batches one replay may name.
const MAX_REPLAY_BATCHES: usize = 10_000;

/// Replays dead clicks (or, with `preview`, counts them): each gets another delivery, once.
#[utoipa::path(post, path = "/dead-letters/replay", tag = "dead letters", request_body = ReplayRequest,
    responses((status = 200, body = ReplaySummary), (status = 400, body = Problem), (status = 422, body = Problem)))]
pub async fn replay(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<Json<ReplaySummary>, Problem> {
    let mut errors = Vec::new();
    let campaign_id = CampaignId::parse(request.campaign_id.clone())
        .map_err(|e| errors.push(FieldError::new("campaign_id", e.to_string())))
        .ok();
    if request.batch_ids.len() > MAX_REPLAY_BATCHES {
        errors.push(FieldError::new("batch_ids", format!("at most {MAX_REPLAY_BATCHES} batches")));
    }
    if let Some(i) = request.batch_ids.iter().position(|&id| id <= 0) {
        errors.push(FieldError::new(format!("batch_ids[{i}]"), "must be a positive batch id"));
    }
    let reason = request.reason.clone().unwrap_or_else(|| "replayed through the API".to_owned());
    if !(1..=500).contains(&reason.trim().chars().count()) {
        errors.push(FieldError::new("reason", "must have 1 to 500 characters"));
    }
    let mut client = app.client().await?;
    if let Some(id) = &campaign_id
        && campaigns::get(&**client, id).await?.is_none()
    {
        errors.push(FieldError::new("campaign_id", format!("no campaign {:?}", id.as_str())));
    }
    let (Some(campaign_id), true) = (campaign_id, errors.is_empty()) else { return Err(Problem::invalid(errors)) };
    let scope = ReplayScope { campaign_id, batch_ids: request.batch_ids };
    if request.preview {
        return Ok(Json(replay::preview(&**client, &scope).await?));
    }
    let summary = replay::replay_dead(&mut client, &scope, reason.trim()).await?;
    if summary.batches > 0 {
        // Recorded once the replay (its own transaction) has committed.
        let after = serde_json::json!({"batch_ids": scope.batch_ids, "reason": reason.trim(), "replayed": summary});
        let id = scope.campaign_id.as_str();
        audit::record(&**client, &caller, Entity::Campaign, id, "replay", None, Some(after)).await?;
    }
    Ok(Json(summary))
}
