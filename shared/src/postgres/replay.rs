//! Replaying dead clicks: a dead or partially failed batch gets its dead clicks back for another delivery,
//! without sending its delivered clicks again (see `migrations/V13__dead_click_replay.sql`).

use chrono::NaiveDate;
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;
use crate::domain::CampaignId;

/// Which dead clicks to replay: a campaign's, or those of some of its batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayScope {
    pub campaign_id: CampaignId,
    /// Only these batches; empty: every batch of the campaign.
    pub batch_ids: Vec<i64>,
}

/// What a replay reopened (or, as a preview, would reopen).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplaySummary {
    pub batches: u64,
    pub clicks: u64,
}

/// What [`replay_dead`] would reopen now, changing nothing: the count a person confirms before replaying.
pub async fn preview(db: &impl GenericClient, scope: &ReplayScope) -> Result<ReplaySummary, DbError> {
    let rows = dead_by_batch(db, scope, false).await?;
    Ok(ReplaySummary {
        batches: rows.len() as u64,
        clicks: rows.iter().map(|r| u64::try_from(r.get::<_, i32>("dead")).unwrap_or(0)).sum(),
    })
}

/// The finished batches in `scope` that hold dead clicks, with their count (`dead`) and what they reserved;
/// `lock`: the batches are locked for the replay. A click is dead while it has more 'dead' rows than 'replayed'
/// ones, and was never delivered.
async fn dead_by_batch(
    db: &impl GenericClient,
    scope: &ReplayScope,
    lock: bool,
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    let batches = db
        .query(
            &format!(
                "SELECT batch_id FROM batches
                 WHERE campaign_id = $1 AND (cardinality($2::bigint[]) = 0 OR batch_id = ANY($2))
                   AND state IN ('dead', 'partially_failed')
                 ORDER BY batch_id
                 {lock}"
            ),
            &[&scope.campaign_id.as_str(), &scope.batch_ids],
        )
        .await?;
    let ids: Vec<i64> = batches.iter().map(|r| r.get(0)).collect();
    Ok(db
        .query(
            "SELECT b.batch_id, b.reserved_day, b.reserved_clicks, b.reserved_micros, count(k.*)::int AS dead
             FROM batches b
             JOIN (SELECT r.batch_id FROM delivery_results r WHERE r.batch_id = ANY($1)
                   GROUP BY r.batch_id, r.campaign_id, r.click_id
                   HAVING count(*) FILTER (WHERE r.outcome = 'dead') > count(*) FILTER (WHERE r.outcome = 'replayed')
                      AND NOT bool_or(r.outcome = 'delivered')) k USING (batch_id)
             GROUP BY b.batch_id
             ORDER BY b.batch_id",
            &[&ids],
        )
        .await?)
}

/// Replays the dead clicks in `scope`, in one transaction: each gets a `replayed` row (with `reason`), the day
/// ledger and the campaign's pacing counters get back what those clicks had reserved (their failures are no
/// longer failures; the next claim reserves them again under that day's caps and budgets), and their batches go
/// back to `pending`, due now. Delivered clicks stay delivered and are never sent again: the bridge skips them,
/// and the batch's `settled_clicks` keeps them out of the next reservation and the next ledger count.
pub async fn replay_dead(
    client: &mut tokio_postgres::Client,
    scope: &ReplayScope,
    reason: &str,
) -> Result<ReplaySummary, DbError> {
    let tx = client.transaction().await?;
    // The campaign's counters first, in the order the pacer's claim takes its locks (counters, then batches).
    tx.query("SELECT 1 FROM campaign_pacing WHERE campaign_id = $1 FOR UPDATE", &[&scope.campaign_id.as_str()]).await?;
    let rows = dead_by_batch(&tx, scope, true).await?;
    let mut summary = ReplaySummary::default();
    for row in &rows {
        let batch_id: i64 = row.get("batch_id");
        let dead = row.get::<_, i32>("dead");
        let reserved_day: Option<NaiveDate> = row.get("reserved_day");
        let reserved_clicks: i32 = row.get("reserved_clicks");
        let reserved_micros: i64 = row.get("reserved_micros");
        let price = if reserved_clicks > 0 { reserved_micros / i64::from(reserved_clicks) } else { 0 };
        let given_micros = price * i64::from(dead);
        tx.execute(
            "INSERT INTO delivery_results (batch_id, fence, campaign_id, click_id, partner_id, attempt, outcome, error)
             SELECT r.batch_id, max(r.fence), r.campaign_id, r.click_id, max(r.partner_id), max(r.attempt),
                    'replayed', $2
             FROM delivery_results r WHERE r.batch_id = $1
             GROUP BY r.batch_id, r.campaign_id, r.click_id
             HAVING count(*) FILTER (WHERE r.outcome = 'dead') > count(*) FILTER (WHERE r.outcome = 'replayed')
                AND NOT bool_or(r.outcome = 'delivered')",
            &[&batch_id, &reason],
        )
        .await?;
        if let Some(day) = reserved_day {
            // Their release and their failure are undone on the day they were counted; spend stays (only
            // delivered clicks spent).
            tx.execute(
                "UPDATE campaign_day_ledger
                 SET failed_clicks = GREATEST(failed_clicks - $3, 0),
                     released_clicks = GREATEST(released_clicks - $3, delivered_clicks + GREATEST(failed_clicks - $3, 0)),
                     reserved_micros = GREATEST(reserved_micros - $4, spend_micros), updated_at = now()
                 WHERE campaign_id = $1 AND local_day = $2",
                &[&scope.campaign_id.as_str(), &day, &i64::from(dead), &given_micros],
            )
            .await?;
            tx.execute(
                "UPDATE campaign_pacing
                 SET released_today = CASE WHEN local_day = $2 THEN GREATEST(released_today - $3, 0)
                                           ELSE released_today END,
                     reserved_today_micros = CASE WHEN local_day = $2 THEN GREATEST(reserved_today_micros - $4, 0)
                                                  ELSE reserved_today_micros END,
                     reserved_total_micros = GREATEST(reserved_total_micros - $4, 0), updated_at = now()
                 WHERE campaign_id = $1",
                &[&scope.campaign_id.as_str(), &day, &i64::from(dead), &given_micros],
            )
            .await?;
        }
        tx.execute(
            "UPDATE batches SET state = 'pending', finished_at = NULL, due_at = now(), defer_reason = NULL,
                    delivery_lease_until = NULL, settled_clicks = click_count - $2,
                    reserved_day = NULL, reserved_clicks = 0, reserved_micros = 0
             WHERE batch_id = $1",
            &[&batch_id, &dead],
        )
        .await?;
        summary.batches += 1;
        summary.clicks += dead as u64;
    }
    tx.commit().await?;
    Ok(summary)
}
