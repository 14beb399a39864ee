//! Statistics: a campaign's or a partner's series per minute or per hour (released, delivered, failed, throttled,
//! dead, spend, latency percentiles) read from the rollups, and a campaign's local day against its plan with its
//! budget consumption.

use axum::extract::{Path, State};
use axum::{Json, Router, routing};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use clickpacer::pacing::{DayInputs, DayView, LocalDay, day_view};
use clickpacer::postgres::stats::{self, Scope};
use clickpacer::postgres::{campaigns, partners, reports};
use clickpacer::stats::{Granularity, StatsPoint, series};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::QueryParams;
use crate::problem::Problem;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/campaigns/{campaign_id}/stats", routing::get(campaign_stats))
        .route("/partners/{partner_id}/stats", routing::get(partner_stats))
        .route("/campaigns/{campaign_id}/pacing", routing::get(pacing))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// `minute` or `hour` (the default).
    granularity: Option<Granularity>,
    /// Start (RFC 3339), rounded down to its bucket; by default an hour of minutes or a day of hours before `to`.
    from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339); now by default. At most 7 days after `from` for minutes, 93 for hours.
    to: Option<DateTime<Utc>>,
}

/// A series of buckets, every one present (empty ones as zeros), with the span's totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsSeries {
    pub granularity: Granularity,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub points: Vec<StatsPoint>,
    /// The whole span; its latency percentiles come from the buckets' histograms added up.
    pub totals: StatsPoint,
}

/// A campaign's delivery statistics per minute or per hour.
#[utoipa::path(get, path = "/campaigns/{campaign_id}/stats", tag = "campaigns",
    params(("campaign_id" = String, Path), SeriesParams),
    responses((status = 200, body = StatsSeries), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn campaign_stats(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<SeriesParams>,
) -> Result<Json<StatsSeries>, Problem> {
    let id = crate::campaigns::campaign_id(id)?;
    let client = app.client().await?;
    campaigns::get_stored(&**client, &id).await?.ok_or_else(|| crate::campaigns::unknown(&id))?;
    read_series(&**client, Scope::Campaign(id.as_str()), &p).await.map(Json)
}

/// A partner's delivery statistics per minute or per hour: every campaign that delivered to it, added up.
#[utoipa::path(get, path = "/partners/{partner_id}/stats", tag = "partners",
    params(("partner_id" = String, Path), SeriesParams),
    responses((status = 200, body = StatsSeries), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn partner_stats(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<SeriesParams>,
) -> Result<Json<StatsSeries>, Problem> {
    let id = crate::partners::partner_id(id)?;
    let client = app.client().await?;
    partners::get_stored(&**client, &id).await?.ok_or_else(|| crate::partners::unknown(&id))?;
    read_series(&**client, Scope::Partner(id.as_str()), &p).await.map(Json)
}

async fn read_series(
    db: &impl tokio_postgres::GenericClient,
    scope: Scope<'_>,
    p: &SeriesParams,
) -> Result<StatsSeries, Problem> {
    let (granularity, from, to) = span(p, Utc::now())?;
    let stored = stats::buckets(db, scope, granularity, from, to).await?;
    let (points, totals) = series(granularity, from, to, stored);
    Ok(StatsSeries { granularity, from: totals.start, to, points, totals })
}

/// The span a request asks for, checked: `from` before `to`, no longer than the granularity allows.
fn span(p: &SeriesParams, now: DateTime<Utc>) -> Result<(Granularity, DateTime<Utc>, DateTime<Utc>), Problem> {
    let granularity = p.granularity.unwrap_or(Granularity::Hour);
    let to = p.to.unwrap_or(now);
    let default_span = match granularity {
        Granularity::Minute => Duration::minutes(60),
        Granularity::Hour => Duration::hours(24),
    };
    let from = granularity.start_of(p.from.unwrap_or(to - default_span));
    if from >= to {
        return Err(Problem::malformed(format!("from ({from}) must be before to ({to})")));
    }
    if to - from > granularity.max_span() {
        return Err(Problem::malformed(format!(
            "a {} series spans at most {} days (asked for {} hours)",
            granularity.as_str(),
            granularity.max_span().num_days(),
            (to - from).num_hours()
        )));
    }
    Ok((granularity, from, to))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PacingParams {
    /// The campaign's local date (`YYYY-MM-DD`); today in its zone by default.
    day: Option<NaiveDate>,
}

/// A campaign's pacing: a local day against its plan, its budget consumption and its last 30 local days.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pacing {
    #[schema(value_type = Object)]
    pub campaign: clickpacer::domain::Campaign,
    pub day: DayView,
    pub budget: Budget,
    /// The last 30 local days from the day ledger, newest first.
    #[schema(value_type = Vec<Object>)]
    pub days: Vec<reports::PacingDay>,
}

/// Money against the campaign's budgets (integer micros). `reserved` is what the budget rules count (clicks
/// released, delivered or not yet); `spent` is what delivered clicks cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct Budget {
    pub cost_per_click_micros: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_budget_micros: Option<i64>,
    pub day_spent_micros: i64,
    pub day_reserved_micros: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_budget_micros: Option<i64>,
    pub total_spent_micros: i64,
    pub total_reserved_micros: i64,
}

/// A campaign's local day against its plan (the engine's expected curve, actual deliveries per local hour, a
/// projection to the day's end; DST days have 23 or 25 hours), its budget consumption and its last 30 days.
#[utoipa::path(get, path = "/campaigns/{campaign_id}/pacing", tag = "campaigns",
    params(("campaign_id" = String, Path), PacingParams),
    responses((status = 200, body = Pacing), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn pacing(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<PacingParams>,
) -> Result<Json<Pacing>, Problem> {
    let id = crate::campaigns::campaign_id(id)?;
    let client = app.client().await?;
    let Some(campaign) = campaigns::get(&**client, &id).await? else { return Err(crate::campaigns::unknown(&id)) };
    let now = Utc::now();
    let tz = campaign.time_zone;
    let today = LocalDay::containing(tz, now);
    let day = match p.day {
        None => today,
        Some(date) if date > today.date => {
            return Err(Problem::malformed(format!("day {date} has not begun in {}", tz.name())));
        }
        Some(date) => {
            LocalDay::on(tz, date).ok_or_else(|| Problem::malformed(format!("{date} is not a day in {}", tz.name())))?
        }
    };
    let (released, waiting, minutes) = stats::day_counters(&**client, id.as_str(), &day).await?;
    let view = day_view(&campaign, &DayInputs { day, released, waiting, minutes, now });
    let spend = stats::spend(&**client, id.as_str(), day.date).await?;
    let days = reports::pacing_days(&**client, id.as_str(), 30).await?;
    let budget = Budget {
        cost_per_click_micros: campaign.cost_per_click.0,
        daily_budget_micros: campaign.daily_budget.map(|m| m.0),
        day_spent_micros: spend.spent_day,
        day_reserved_micros: spend.reserved_day,
        total_budget_micros: campaign.total_budget.map(|m| m.0),
        total_spent_micros: spend.spent_total,
        total_reserved_micros: spend.reserved_total,
    };
    Ok(Json(Pacing { campaign, day: view, budget, days }))
}
