//! Timelines from the DynamoDB event log: one click's story (the row it came from, its batch, every delivery
//! attempt PostgreSQL recorded, and its events: ingested, released, delivered, failed, dead), and a campaign's or
//! a partner's events in one UTC hour through the log's indexes.

use axum::extract::{Path, State};
use axum::{Json, Router, routing};
use chrono::{Duration, Utc};
use clickpacer::aws::dynamodb::TimelineEvent;
use clickpacer::domain::ClickState;
use clickpacer::domain::events::EVENT_RETENTION_DAYS;
use clickpacer::postgres::clicks::{self, ClickFilter, ClickRecord, ClickSummary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{QueryParams, page_limit};
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/campaigns/{campaign_id}/clicks", routing::get(search))
        .route("/campaigns/{campaign_id}/clicks/{click_id}", routing::get(timeline))
        .route("/campaigns/{campaign_id}/events", routing::get(campaign_events))
        .route("/partners/{partner_id}/events", routing::get(partner_events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    upload_id: Option<i64>,
    /// `pending`, `in_flight`, `delivered`, `dead` or `cancelled`.
    state: Option<ClickState>,
    /// Clicked at or after this instant (RFC 3339).
    clicked_from: Option<chrono::DateTime<Utc>>,
    /// Clicked before this instant (RFC 3339).
    clicked_until: Option<chrono::DateTime<Utc>>,
    /// 1-200, 50 by default.
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClickList {
    pub items: Vec<ClickSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A campaign's clicks by upload, state and click time, in click id order, with their attempts so far.
#[utoipa::path(get, path = "/campaigns/{campaign_id}/clicks", tag = "campaigns",
    params(("campaign_id" = String, Path), SearchParams),
    responses((status = 200, body = ClickList), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn search(
    State(app): State<AppState>,
    Path(campaign): Path<String>,
    QueryParams(p): QueryParams<SearchParams>,
) -> Result<Json<ClickList>, Problem> {
    let campaign_id = crate::campaigns::campaign_id(campaign)?;
    let limit = page_limit(p.limit)?;
    let after = p
        .cursor
        .map(|c| {
            clickpacer::domain::ClickId::parse(c).map_err(|_| Problem::malformed("cursor is not one this API gave"))
        })
        .transpose()?;
    let filter = ClickFilter {
        upload_id: p.upload_id,
        state: p.state,
        clicked_from: p.clicked_from,
        clicked_until: p.clicked_until,
    };
    let client = app.client().await?;
    clickpacer::postgres::campaigns::get_stored(&**client, &campaign_id)
        .await?
        .ok_or_else(|| crate::campaigns::unknown(&campaign_id))?;
    let (items, next) =
        clicks::page(&**client, campaign_id.as_str(), &filter, after.as_ref().map(|c| c.as_str()), limit).await?;
    Ok(Json(ClickList { items, next_cursor: next }))
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
            Some(log.click_events(campaign_id.as_str(), click_id.as_str(), record.batch_id, &days).await?)
        }
        None => None,
    };
    Ok(Json(ClickTimeline { click: record, events }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HourParams {
    /// The UTC hour, `YYYY-MM-DDTHH` (the current one by default).
    hour: Option<String>,
    /// Most events returned, 1-1000 (500 by default), oldest first.
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HourOfEvents {
    pub hour: String,
    pub events: Vec<TimelineEvent>,
    /// More events happened in the hour than `limit`.
    pub truncated: bool,
}

/// A campaign's events in one UTC hour, from the event log's `by_campaign` index.
#[utoipa::path(get, path = "/campaigns/{campaign_id}/events", tag = "campaigns",
    params(("campaign_id" = String, Path), HourParams),
    responses((status = 200, body = HourOfEvents), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn campaign_events(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<HourParams>,
) -> Result<Json<HourOfEvents>, Problem> {
    let id = crate::campaigns::campaign_id(id)?;
    let (hour, limit) = hour_and_limit(&p)?;
    let log = event_log(&app)?;
    let items = log.campaign_hour(id.as_str(), &hour).await?;
    Ok(Json(hour_of(hour, &items, limit)))
}

/// A partner's events in one UTC hour, from the event log's `by_partner` index.
#[utoipa::path(get, path = "/partners/{partner_id}/events", tag = "partners",
    params(("partner_id" = String, Path), HourParams),
    responses((status = 200, body = HourOfEvents), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn partner_events(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<HourParams>,
) -> Result<Json<HourOfEvents>, Problem> {
    let id = crate::partners::partner_id(id)?;
    let (hour, limit) = hour_and_limit(&p)?;
    let log = event_log(&app)?;
    let items = log.partner_hour(id.as_str(), &hour).await?;
    Ok(Json(hour_of(hour, &items, limit)))
}

fn hour_and_limit(p: &HourParams) -> Result<(String, usize), Problem> {
    let hour = match &p.hour {
        Some(hour) => {
            chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00:00"), "%Y-%m-%dT%H:%M:%S")
                .map_err(|_| Problem::malformed(format!("hour {hour:?} is not a UTC hour such as 2026-12-07T10")))?;
            hour.clone()
        }
        None => Utc::now().format("%Y-%m-%dT%H").to_string(),
    };
    let limit = p.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::malformed(format!("limit must be from 1 to 1000 (got {limit})")));
    }
    Ok((hour, limit))
}

fn event_log(app: &AppState) -> Result<&clickpacer::aws::dynamodb::DynamoEventLog, Problem> {
    app.events.as_ref().ok_or_else(|| Problem::not_found("this API has no event log to read"))
}

fn hour_of(
    hour: String,
    items: &[std::collections::HashMap<String, clickpacer::aws::dynamodb::ItemValue>],
    limit: usize,
) -> HourOfEvents {
    let events: Vec<TimelineEvent> = items.iter().filter_map(TimelineEvent::from_item).collect();
    let truncated = events.len() > limit;
    HourOfEvents { hour, events: events.into_iter().take(limit).collect(), truncated }
}
