//! The pipeline's health as PostgreSQL sees it, for the management API's health view: how far the pacers are
//! behind, how long released work has waited for the bridges, uploads nobody is reading, work nobody is coming
//! for, dead clicks, the event outbox, and each partner's adaptive state. Every figure is one indexed aggregate:
//! none reads clicks.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;
use super::reports::STRANDED_AFTER_SECONDS;

/// An upload still processing with nobody's live lease on it for this long is stuck: the slicer's retries have
/// stopped (Lambda gives an event up after its retries).
pub const STUCK_UPLOAD_AFTER_SECONDS: i64 = 15 * 60;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PipelineHealth {
    /// How long the oldest due batch has waited past its due time for a pacer (0 when nothing is due).
    pub pacer_lag_seconds: f64,
    /// Batches due now and not yet claimed.
    pub due_batches: i64,
    /// How long the oldest batch on the click queue has waited for a bridge since its release (0 when none).
    pub oldest_queued_seconds: f64,
    /// Click events recorded in PostgreSQL and not yet in the event log.
    pub events_waiting: i64,
    /// Uploads processing with no live lease for 15 minutes: nobody will finish them by themselves.
    pub stuck_uploads: i64,
    /// Batches pending long past their due time, or claimed or queued under a lease long expired.
    pub stranded_batches: i64,
    pub dead_clicks: i64,
    pub partners: Vec<PartnerState>,
}

/// A partner's adaptive state: what the bridges learned from its answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartnerState {
    pub partner_id: String,
    pub enabled: bool,
    /// The configured rate, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<i32>,
    /// The share of its rate the pacers may use now (AIMD: cut on throttling, regained over time), 0-1.
    pub allowance: f64,
    /// The send rate the bridges use for it (learned, or its configured rate adjusted by its answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_rate: Option<f64>,
    pub send_rate_learned: bool,
    /// Nothing is sent to it before this instant (its Retry-After).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    /// Batches waiting for it or on their way to it.
    pub open_batches: i64,
}

pub async fn pipeline(db: &impl GenericClient) -> Result<PipelineHealth, DbError> {
    let batches = db
        .query_one(
            "SELECT coalesce(extract(epoch FROM now() - min(due_at) FILTER (WHERE state = 'pending'
                                                                           AND due_at <= now())), 0)::float8 AS lag,
                    count(*) FILTER (WHERE state = 'pending' AND due_at <= now()) AS due,
                    coalesce(extract(epoch FROM now() - min(released_at) FILTER (WHERE state = 'queued')), 0)::float8
                        AS oldest_queued,
                    count(*) FILTER (WHERE (state = 'pending' AND due_at <= now() - make_interval(secs => $1))
                        OR (state IN ('claimed', 'queued')
                            AND NOT coalesce(lease_expires_at > now() - make_interval(secs => $1), false)
                            AND NOT coalesce(delivery_lease_until > now(), false))) AS stranded
             FROM batches WHERE state IN ('pending', 'claimed', 'queued')",
            &[&(STRANDED_AFTER_SECONDS as f64)],
        )
        .await?;
    let stuck_uploads: i64 = db
        .query_one(
            "SELECT count(*) FROM uploads
             WHERE status = 'processing' AND updated_at < now() - make_interval(secs => $1)
               AND NOT coalesce(lease_expires_at > now(), false)",
            &[&(STUCK_UPLOAD_AFTER_SECONDS as f64)],
        )
        .await?
        .get(0);
    let events_waiting = super::bridge::outbox_depth(db).await?;
    let dead_clicks = super::dead_letters::count(db, &super::dead_letters::DeadFilter::default()).await?;
    let partners = db
        .query(
            "SELECT p.partner_id, p.enabled, p.rate_per_second, coalesce(h.allowance, 1.0) AS allowance,
                    h.send_rate, coalesce(h.send_rate_learned, false) AS send_rate_learned,
                    CASE WHEN h.retry_after_until > now() THEN h.retry_after_until END AS paused_until,
                    coalesce(h.consecutive_failures, 0) AS consecutive_failures,
                    (SELECT count(*) FROM batches b WHERE b.partner_id = p.partner_id
                       AND b.state IN ('pending', 'claimed', 'queued')) AS open_batches
             FROM partners p LEFT JOIN partner_health h USING (partner_id) ORDER BY p.partner_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| PartnerState {
            partner_id: r.get("partner_id"),
            enabled: r.get("enabled"),
            rate_per_second: r.get("rate_per_second"),
            allowance: r.get("allowance"),
            send_rate: r.get("send_rate"),
            send_rate_learned: r.get("send_rate_learned"),
            paused_until: r.get("paused_until"),
            consecutive_failures: r.get("consecutive_failures"),
            open_batches: r.get("open_batches"),
        })
        .collect();
    Ok(PipelineHealth {
        pacer_lag_seconds: batches.get("lag"),
        due_batches: batches.get("due"),
        oldest_queued_seconds: batches.get("oldest_queued"),
        events_waiting,
        stuck_uploads,
        stranded_batches: batches.get("stranded"),
        dead_clicks,
        partners,
    })
}
