//! System health for ops and the dashboard's overview: queue depths, the pacers' lag, how long released work
//! waits for the bridges, the event outbox, stuck uploads, stranded work, dead clicks and every partner's
//! adaptive state, with alerts that say what needs a person and why.

use axum::Json;
use axum::extract::State;
use clickpacer::aws::sqs::QueueCounts;
use clickpacer::postgres::health::{self, PipelineHealth};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::Problem;

/// Past this, the pacers are not keeping up (they run every minute).
const PACER_LAG_ALERT_SECONDS: f64 = 180.0;

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    /// `ok`, or `attention` when an alert is raised.
    pub status: &'static str,
    pub alerts: Vec<Alert>,
    #[serde(flatten)]
    pub pipeline: PipelineHealth,
    /// The click queue's messages (absent where the API has no queue to ask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_queue: Option<QueueCounts>,
    /// Messages SQS moved to the dead-letter queue after their last receive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<QueueCounts>,
}

/// Something that needs a person.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alert {
    /// A stable name: `pacer_lag`, `stranded_work`, `stuck_uploads`, `dead_letter_queue`, `dead_clicks`,
    /// `partner_paused`, `partner_throttled`.
    pub kind: &'static str,
    pub detail: String,
}

/// The system's health, with alerts.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = HealthView)))]
pub async fn health(State(app): State<AppState>) -> Result<Json<HealthView>, Problem> {
    let pipeline = {
        let client = app.client().await?;
        health::pipeline(&**client).await?
    };
    let (click_queue, dead_letter_queue) = match &app.queues {
        Some(queues) => {
            let (click, dead) = tokio::join!(queues.click.counts(), queues.dead_letter.counts());
            (Some(click?), Some(dead?))
        }
        None => (None, None),
    };
    let alerts = alerts(&pipeline, dead_letter_queue.as_ref());
    let status = if alerts.is_empty() { "ok" } else { "attention" };
    Ok(Json(HealthView { status, alerts, pipeline, click_queue, dead_letter_queue }))
}

fn alerts(p: &PipelineHealth, dead_letter_queue: Option<&QueueCounts>) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let mut raise = |kind, detail: String| alerts.push(Alert { kind, detail });
    if p.pacer_lag_seconds > PACER_LAG_ALERT_SECONDS {
        raise(
            "pacer_lag",
            format!(
                "the oldest due batch has waited {:.0} s for a pacer ({} due): are the pacer's schedule and its \
                 database connections working?",
                p.pacer_lag_seconds, p.due_batches
            ),
        );
    }
    if p.stranded_batches > 0 {
        raise(
            "stranded_work",
            format!("{} batches are pending long past due or held under an expired lease", p.stranded_batches),
        );
    }
    if p.stuck_uploads > 0 {
        raise(
            "stuck_uploads",
            format!("{} uploads have been processing with nobody reading them for 15 minutes", p.stuck_uploads),
        );
    }
    if let Some(dlq) = dead_letter_queue.filter(|q| q.visible + q.in_flight + q.delayed > 0) {
        raise(
            "dead_letter_queue",
            format!("{} messages in the dead-letter queue", dlq.visible + dlq.in_flight + dlq.delayed),
        );
    }
    if p.dead_clicks > 0 {
        raise("dead_clicks", format!("{} clicks are dead: see /dead-letters/reasons", p.dead_clicks));
    }
    for partner in p.partners.iter().filter(|partner| partner.enabled) {
        if let Some(until) = partner.paused_until {
            raise("partner_paused", format!("{} asked for a pause until {until} (Retry-After)", partner.partner_id));
        } else if partner.allowance < 0.5 {
            raise(
                "partner_throttled",
                format!(
                    "{} throttled us: {:.0} % of its rate is used for now",
                    partner.partner_id,
                    partner.allowance * 100.0
                ),
            );
        }
    }
    alerts
}
