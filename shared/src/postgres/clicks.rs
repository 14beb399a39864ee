//! One click as PostgreSQL knows it, for the management API's click timeline: the row it came from, its batch,
//! and every delivery attempt's outcome. The click is found through `click_ids` (campaign, click id) and its
//! ingestion time, so only its own month's partition of `clicks` is read.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClickRecord {
    pub campaign_id: String,
    pub click_id: String,
    pub upload_id: i64,
    /// The data row of the upload it was read from.
    pub row_number: i64,
    pub batch_id: i64,
    /// The batch's state now.
    pub batch_state: String,
    pub clicked_at: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landing_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: serde_json::Value,
    pub attempts: Vec<Attempt>,
}

/// One recorded outcome of a delivery attempt (or a replay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    pub attempt: i32,
    /// `delivered`, `retrying`, `failed`, `dead`, `skipped` or `replayed`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer did not say whether the partner took the click (a reset after sending, a timeout).
    pub ambiguous: bool,
    pub recorded_at: DateTime<Utc>,
}

pub async fn get(db: &impl GenericClient, campaign_id: &str, click_id: &str) -> Result<Option<ClickRecord>, DbError> {
    let Some(row) = db
        .query_opt(
            "SELECT c.upload_id, c.row_number, c.batch_id, b.state, c.clicked_at, c.ingested_at, host(c.ip) AS ip,
                    c.user_agent, c.landing_url, c.sub_id, c.attributes
             FROM click_ids k
             JOIN clicks c ON c.campaign_id = k.campaign_id AND c.click_id = k.click_id
                          AND c.ingested_at = k.ingested_at
             JOIN batches b ON b.batch_id = c.batch_id
             WHERE k.campaign_id = $1 AND k.click_id = $2",
            &[&campaign_id, &click_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let batch_id: i64 = row.get("batch_id");
    let attempts = db
        .query(
            "SELECT attempt, outcome, http_status, latency_ms, error, ambiguous, recorded_at FROM delivery_results
             WHERE batch_id = $1 AND campaign_id = $2 AND click_id = $3 ORDER BY result_id",
            &[&batch_id, &campaign_id, &click_id],
        )
        .await?
        .iter()
        .map(|r| Attempt {
            attempt: r.get("attempt"),
            outcome: r.get("outcome"),
            http_status: r.get("http_status"),
            latency_ms: r.get("latency_ms"),
            error: r.get("error"),
            ambiguous: r.get("ambiguous"),
            recorded_at: r.get("recorded_at"),
        })
        .collect();
    Ok(Some(ClickRecord {
        campaign_id: campaign_id.to_owned(),
        click_id: click_id.to_owned(),
        upload_id: row.get("upload_id"),
        row_number: row.get("row_number"),
        batch_id,
        batch_state: row.get("state"),
        clicked_at: row.get("clicked_at"),
        ingested_at: row.get("ingested_at"),
        ip: row.get("ip"),
        user_agent: row.get("user_agent"),
        landing_url: row.get("landing_url"),
        sub_id: row.get("sub_id"),
        attributes: row.get("attributes"),
        attempts,
    }))
}
