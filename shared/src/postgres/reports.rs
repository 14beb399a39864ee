//! Reconciliation: every accepted click is delivered, dead-lettered, cancelled or still pending, per upload and
//! per campaign, and every row read is accepted, rejected with a reason, or a duplicate. Pending must be
//! justified (due later, deferred by a named rule, or in flight under a live lease); anything else is stranded.

use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;

/// One campaign's (or upload's) clicks by fate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClickFates {
    pub accepted: i64,
    pub delivered: i64,
    pub dead: i64,
    pub cancelled: i64,
    /// Waiting, claimed, queued or being retried: `due + deferred + in_flight + stranded`.
    pub pending: i64,
    /// Pending and due in the future (or within a pacer period now).
    pub due: i64,
    /// Pending, held back by a named rule (cap, budget, daypart, pause...) until an instant still to come.
    pub deferred: i64,
    /// Claimed by a pacer or queued for the bridge under a live lease.
    pub in_flight: i64,
    /// Pending with nothing justifying it: due long ago with nobody coming, a rule that relaxed long ago, a lease
    /// long expired. Must be 0.
    pub stranded: i64,
    /// Clicks of a finished batch that are neither delivered nor dead: must be 0.
    pub unaccounted: i64,
}

impl ClickFates {
    pub fn holds(&self) -> bool {
        self.unaccounted == 0
            && self.stranded == 0
            && self.accepted == self.delivered + self.dead + self.cancelled + self.pending
            && self.pending == self.due + self.deferred + self.in_flight + self.stranded
    }
}

/// How long past its due instant, or past its lease, pending work may wait for the next pacer run before it
/// counts as stranded: the schedule's period (a minute) and a run's own length.
pub const STRANDED_AFTER_SECONDS: i64 = 120;

#[derive(Debug, Clone, Serialize)]
pub struct CampaignReconciliation {
    pub campaign_id: String,
    #[serde(flatten)]
    pub fates: ClickFates,
}

#[derive(Debug, Clone, Serialize)]
pub struct UploadReconciliation {
    pub upload_id: i64,
    pub object_key: String,
    pub status: String,
    pub status_detail: Option<String>,
    pub rows: i64,
    pub accepted_rows: i64,
    pub rejected_rows: i64,
    pub duplicate_rows: i64,
    /// Clicks stored for this upload: must equal `accepted_rows`.
    pub stored_clicks: i64,
    /// Rejected rows by reason, most frequent first.
    pub rejects: Vec<RejectGroup>,
    #[serde(flatten)]
    pub fates: ClickFates,
}

/// Rejected rows of one upload whose reasons differ only in the values they quote (`unknown campaign "a"`,
/// `unknown campaign "b"`): one line each in a report, however many values a file gets wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RejectGroup {
    /// One of the reasons in full, values and all (the first in sort order).
    pub example: String,
    pub rows: i64,
    /// Distinct reasons in the group (1: every row had exactly `example`).
    pub distinct: i64,
}

impl UploadReconciliation {
    pub fn holds(&self) -> bool {
        self.rows == self.accepted_rows + self.rejected_rows + self.duplicate_rows
            && self.stored_clicks == self.accepted_rows
            && self.fates.holds()
    }
}

const FATES: &str = "
    WITH per_click AS (
        SELECT c.campaign_id, c.upload_id, b.state AS batch_state,
               CASE
                   WHEN b.state = 'pending' AND b.due_at > now() - make_interval(secs => $1::bigint)
                       THEN CASE WHEN b.defer_reason IS NULL THEN 'due' ELSE 'deferred' END
                   WHEN b.state IN ('claimed', 'queued')
                        AND (b.lease_expires_at > now() - make_interval(secs => $1::bigint)
                             OR b.delivery_lease_until > now())
                       THEN 'in_flight'
                   ELSE 'stranded'
               END AS waiting,
               EXISTS (SELECT 1 FROM delivery_results d WHERE d.campaign_id = c.campaign_id
                       AND d.click_id = c.click_id AND d.outcome = 'delivered') AS delivered,
               -- Dead while it has more 'dead' results than 'replayed' ones (a replay follows each death it undoes).
               (SELECT count(*) FILTER (WHERE d.outcome = 'dead') > count(*) FILTER (WHERE d.outcome = 'replayed')
                FROM delivery_results d WHERE d.batch_id = c.batch_id
                  AND d.campaign_id = c.campaign_id AND d.click_id = c.click_id) AS dead
        FROM clicks c JOIN batches b USING (batch_id)
        WHERE $2::bigint IS NULL OR c.upload_id = $2
    )
    SELECT {key} AS key,
           count(*) AS accepted,
           count(*) FILTER (WHERE delivered) AS delivered,
           count(*) FILTER (WHERE NOT delivered AND dead) AS dead,
           count(*) FILTER (WHERE NOT delivered AND NOT dead AND batch_state = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE NOT delivered AND NOT dead AND batch_state IN ('pending', 'claimed', 'queued'))
               AS pending,
           count(*) FILTER (WHERE NOT delivered AND NOT dead AND batch_state IN ('pending', 'claimed', 'queued')
                            AND waiting = 'due') AS due,
           count(*) FILTER (WHERE NOT delivered AND NOT dead AND batch_state IN ('pending', 'claimed', 'queued')
                            AND waiting = 'deferred') AS deferred,
           count(*) FILTER (WHERE NOT delivered AND NOT dead AND batch_state IN ('pending', 'claimed', 'queued')
                            AND waiting = 'in_flight') AS in_flight,
           count(*) FILTER (WHERE NOT delivered AND NOT dead AND batch_state IN ('pending', 'claimed', 'queued')
                            AND waiting = 'stranded') AS stranded,
           count(*) FILTER (WHERE NOT delivered AND NOT dead
                            AND batch_state IN ('delivered', 'partially_failed', 'dead')) AS unaccounted
    FROM per_click GROUP BY 1";

fn fates(row: &tokio_postgres::Row) -> ClickFates {
    ClickFates {
        accepted: row.get("accepted"),
        delivered: row.get("delivered"),
        dead: row.get("dead"),
        cancelled: row.get("cancelled"),
        pending: row.get("pending"),
        due: row.get("due"),
        deferred: row.get("deferred"),
        in_flight: row.get("in_flight"),
        stranded: row.get("stranded"),
        unaccounted: row.get("unaccounted"),
    }
}

pub async fn campaigns(db: &impl GenericClient) -> Result<Vec<CampaignReconciliation>, DbError> {
    let sql = format!("{} ORDER BY 1", FATES.replace("{key}", "campaign_id"));
    let rows = db.query(&sql, &[&STRANDED_AFTER_SECONDS, &None::<i64>]).await?;
    Ok(rows.iter().map(|r| CampaignReconciliation { campaign_id: r.get("key"), fates: fates(r) }).collect())
}

pub async fn uploads(db: &impl GenericClient) -> Result<Vec<UploadReconciliation>, DbError> {
    uploads_where(db, None).await
}

/// One upload's reconciliation, reading only its own clicks.
pub async fn upload(db: &impl GenericClient, upload_id: i64) -> Result<Option<UploadReconciliation>, DbError> {
    Ok(uploads_where(db, Some(upload_id)).await?.pop())
}

/// Every upload's reconciliation, or one's.
async fn uploads_where(db: &impl GenericClient, upload_id: Option<i64>) -> Result<Vec<UploadReconciliation>, DbError> {
    let sql = FATES.replace("{key}", "upload_id");
    let by_upload: std::collections::HashMap<i64, ClickFates> = db
        .query(&sql, &[&STRANDED_AFTER_SECONDS, &upload_id])
        .await?
        .iter()
        .map(|r| (r.get("key"), fates(r)))
        .collect();
    let rows = db
        .query(
            "SELECT u.upload_id, u.object_key, u.status, u.status_detail, u.rows_done, u.accepted_rows,
                    u.rejected_rows, u.duplicate_rows,
                    (SELECT count(*) FROM clicks c WHERE c.upload_id = u.upload_id) AS stored
             FROM uploads u WHERE $1::bigint IS NULL OR u.upload_id = $1 ORDER BY u.upload_id",
            &[&upload_id],
        )
        .await?;
    let reasons = db
        .query(
            "SELECT upload_id, min(reason) AS example, count(*) AS rows, count(DISTINCT reason) AS distinct_reasons
             FROM upload_rejects WHERE $1::bigint IS NULL OR upload_id = $1
             GROUP BY upload_id, regexp_replace(reason, '\"[^\"]*\"', '\"\"', 'g')
             ORDER BY 1, 3 DESC, 2",
            &[&upload_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let upload_id: i64 = r.get("upload_id");
            UploadReconciliation {
                upload_id,
                object_key: r.get("object_key"),
                status: r.get("status"),
                status_detail: r.get("status_detail"),
                rows: r.get("rows_done"),
                accepted_rows: r.get("accepted_rows"),
                rejected_rows: r.get("rejected_rows"),
                duplicate_rows: r.get("duplicate_rows"),
                stored_clicks: r.get("stored"),
                rejects: reasons
                    .iter()
                    .filter(|x| x.get::<_, i64>(0) == upload_id)
                    .map(|x| RejectGroup {
                        example: x.get("example"),
                        rows: x.get("rows"),
                        distinct: x.get("distinct_reasons"),
                    })
                    .collect(),
                fates: by_upload.get(&upload_id).cloned().unwrap_or_default(),
            }
        })
        .collect())
}

/// Work the pipeline still has to do now: uploads being read, batches claimed or on the queue, and batches
/// due within `horizon_s` seconds. Zero means drained (what remains waits for a later day, cap or budget).
pub async fn work_in_progress(db: &impl GenericClient, horizon_s: i64) -> Result<i64, DbError> {
    Ok(db
        .query_one(
            "SELECT (SELECT count(*) FROM uploads WHERE status = 'processing')
                  + (SELECT count(*) FROM batches WHERE state IN ('claimed', 'queued'))
                  + (SELECT count(*) FROM batches WHERE state = 'pending'
                     AND due_at <= now() + make_interval(secs => $1::bigint))",
            &[&horizon_s],
        )
        .await?
        .get(0))
}

/// A campaign's pacing by local day: released against the cap, delivered, failed, reserved and spent.
#[derive(Debug, Clone, Serialize)]
pub struct PacingDay {
    pub local_day: chrono::NaiveDate,
    pub released_clicks: i64,
    pub delivered_clicks: i64,
    pub failed_clicks: i64,
    pub reserved_micros: i64,
    pub spend_micros: i64,
}

/// The last `days` local days of a campaign, newest first.
pub async fn pacing_days(db: &impl GenericClient, campaign_id: &str, days: i64) -> Result<Vec<PacingDay>, DbError> {
    let rows = db
        .query(
            "SELECT local_day, released_clicks, delivered_clicks, failed_clicks, reserved_micros, spend_micros
             FROM campaign_day_ledger WHERE campaign_id = $1 ORDER BY local_day DESC LIMIT $2",
            &[&campaign_id, &days],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PacingDay {
            local_day: r.get(0),
            released_clicks: r.get(1),
            delivered_clicks: r.get(2),
            failed_clicks: r.get(3),
            reserved_micros: r.get(4),
            spend_micros: r.get(5),
        })
        .collect())
}
