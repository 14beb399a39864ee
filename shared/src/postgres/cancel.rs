//! Cancelling a campaign's pending clicks, all of them or one upload's: a person's decision that they must not be
//! delivered. Only batches still pending are cancelled; a batch claimed by a pacer or queued for a bridge is in
//! their hands under a lease and finishes as it goes (the answer counts those, so a person knows what may still
//! be sent). In a cancelled batch, clicks already delivered stay delivered and dead ones stay dead; the rest count
//! as cancelled in the reconciliation. A pacer that claims a batch at the same moment wins or loses as a whole:
//! the cancel's `WHERE state = 'pending'` is evaluated again on the row the claim committed.

use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;
use crate::domain::CampaignId;

/// What a cancel did (or, as a preview, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cancellation {
    /// Pending batches cancelled.
    pub batches: i64,
    /// Their clicks not yet delivered or dead: now cancelled.
    pub clicks: i64,
    /// Batches claimed or queued right now, left to finish.
    pub in_flight_batches: i64,
}

/// Cancels the pending batches of `campaign_id` (of `upload_id` only, when given); with `preview`, changes
/// nothing and says what it would cancel.
pub async fn cancel_pending(
    db: &impl GenericClient,
    campaign_id: &CampaignId,
    upload_id: Option<i64>,
    preview: bool,
) -> Result<Cancellation, DbError> {
    let row = db
        .query_one(
            "WITH chosen AS (
                 SELECT batch_id, state FROM batches
                 WHERE campaign_id = $1 AND ($2::bigint IS NULL OR upload_id = $2)
                   AND state IN ('pending', 'claimed', 'queued')
             ), cancelled AS (
                 UPDATE batches b SET state = 'cancelled', finished_at = now(), defer_reason = NULL
                 FROM chosen
                 WHERE NOT $3 AND b.batch_id = chosen.batch_id AND b.state = 'pending'
                 RETURNING b.batch_id
             ), counted AS (
                 SELECT batch_id FROM cancelled
                 UNION ALL
                 SELECT batch_id FROM chosen WHERE $3 AND state = 'pending'
             )
             SELECT (SELECT count(*) FROM counted) AS batches,
                    (SELECT count(*) FROM clicks c JOIN counted USING (batch_id)
                     WHERE c.campaign_id = $1
                       AND NOT EXISTS (SELECT 1 FROM delivery_results d
                                       WHERE d.campaign_id = c.campaign_id AND d.click_id = c.click_id
                                         AND d.outcome = 'delivered')
                       AND (SELECT count(*) FILTER (WHERE d.outcome = 'dead')
                                   <= count(*) FILTER (WHERE d.outcome = 'replayed')
                            FROM delivery_results d WHERE d.batch_id = c.batch_id
                              AND d.campaign_id = c.campaign_id AND d.click_id = c.click_id)) AS clicks,
                    (SELECT count(*) FROM chosen WHERE state IN ('claimed', 'queued')) AS in_flight",
            &[&campaign_id.as_str(), &upload_id, &preview],
        )
        .await?;
    Ok(Cancellation { batches: row.get("batches"), clicks: row.get("clicks"), in_flight_batches: row.get("in_flight") })
}
