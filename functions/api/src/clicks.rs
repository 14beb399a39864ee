//! One click's story: the row it came from, its batch, every delivery attempt PostgreSQL recorded, and the
//! events the DynamoDB event log holds for it (ingested, released, delivered, failed, dead), oldest first.

use axum::extract::{Path, State};
use axum::{Json, Router, routing};
use chrono::{Duration, Utc};
use clickpacer::aws::dynamodb::TimelineEvent;
use clickpacer::domain::events::EVENT_RETENTION_DAYS;
use clickpacer::postgres::clicks::{self, ClickRecord};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new().route("/campaigns/{campaign_id}/clicks/{click_id}", routing::get(timeline))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClickTimeline {
    #[serde(flatten)]
    pub click: ClickRecord,
    /// The event log's events for the click, oldest first (absent where the API has no event log to ask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<TimelineEvent>>,
}

/// One click: its row, batch, delivery attempts and event log timeline.
#[utoipa::path(get, path = "/campaigns/{campaign_id}/clicks/{click_id}", tag = "campaigns",
    params(("campaign_id" = String, Path), ("click_id" = String, Path)),
    responses((status = 200, body = ClickTimeline), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn timeline(
    State(app): State<AppState>,
    Path((campaign, click)): Path<(String, String)>,
) -> Result<Json<ClickTimeline>, Problem> {
    let campaign_id = crate::campaigns::campaign_id(campaign)?;
    let click_id = clickpacer::domain::ClickId::parse(click).map_err(|e| Problem::malformed(e.to_string()))?;
    let record = {
        let client = app.client().await?;
        clicks::get(&**client, campaign_id.as_str(), click_id.as_str()).await?
    };
    let Some(record) = record else {
        return Err(Problem::not_found(format!(
            "no click {:?} in campaign {:?}",
            click_id.as_str(),
            campaign_id.as_str()
        )));
    };
    let events = match &app.events {
        Some(log) => {
            // Events are logged under their own UTC day, from the click's ingestion on, and kept for the
            // retention period.
            let first = record.ingested_at.date_naive();
            let last = Utc::now().date_naive().min(first + Duration::days(EVENT_RETENTION_DAYS));
            let days: Vec<String> =
                first.iter_days().take_while(|d| *d <= last).map(|d| d.format("%Y-%m-%d").to_string()).collect();
            Some(log.click_events(campaign_id.as_str(), click_id.as_str(), &days).await?)
        }
        None => None,
    };
    Ok(Json(ClickTimeline { click: record, events }))
}
