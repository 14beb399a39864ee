//! The delivery statistics' rollup tables (`delivery_stats_minute`, `delivery_stats_hour`): added to inside the
//! transactions that record what they count, read as series for a campaign or a partner.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::DbError;
use crate::pacing::MinuteActuals;
use crate::stats::{BUCKETS, Counts, Granularity, LatencyHistogram};

/// Whose buckets a delta or a query is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatsKey {
    pub campaign_id: String,
    pub partner_id: String,
    pub granularity: Granularity,
    pub bucket: DateTime<Utc>,
}

/// Adds `deltas` (never negative) to the rollups, in one statement. Rows are written in key order (minute table,
/// then hour table; campaign, then bucket) so that concurrent writers lock them in the same order; callers take
/// their day-ledger rows first, as both the pacer and the bridge do.
pub async fn add(db: &impl GenericClient, deltas: BTreeMap<StatsKey, Counts>) -> Result<(), DbError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let n = deltas.len();
    let mut granularity = Vec::with_capacity(n);
    let mut campaign = Vec::with_capacity(n);
    let mut partner = Vec::with_capacity(n);
    let mut bucket = Vec::with_capacity(n);
    let mut cols: [Vec<i64>; 8] = Default::default();
    let mut hist: Vec<i32> = Vec::with_capacity(n * BUCKETS);
    for (key, c) in &deltas {
        granularity.push(key.granularity.as_str());
        campaign.push(key.campaign_id.as_str());
        partner.push(key.partner_id.as_str());
        bucket.push(key.bucket);
        for (col, v) in cols.iter_mut().zip([
            c.released,
            c.delivered,
            c.failed,
            c.throttled,
            c.dead,
            c.spend_micros,
            c.latency_sum_ms,
            c.latency.total(),
        ]) {
            col.push(v);
        }
        hist.extend(c.latency.counts().iter().map(|v| i32::try_from(*v).unwrap_or(i32::MAX)));
    }
    let width = BUCKETS as i64;
    // The histograms travel as one flat array, `BUCKETS` counts per row, sliced back per row.
    let upsert = |granularity: Granularity| {
        format!(
            "INSERT INTO {table} AS s (campaign_id, bucket, partner_id, released, delivered, failed, throttled, dead,
                                      spend_micros, latency_sum_ms, latency_hist)
             SELECT campaign_id, bucket, partner_id, released, delivered, failed, throttled, dead, spend,
                    latency_sum,
                    CASE WHEN latency_count > 0 THEN ($12::int[])[(i - 1) * $13 + 1 : i * $13] ELSE '{{}}' END
             FROM d WHERE granularity = '{granularity}' ORDER BY campaign_id, bucket, partner_id
             ON CONFLICT (campaign_id, bucket, partner_id) DO UPDATE SET
                 released = s.released + EXCLUDED.released,
                 delivered = s.delivered + EXCLUDED.delivered,
                 failed = s.failed + EXCLUDED.failed,
                 throttled = s.throttled + EXCLUDED.throttled,
                 dead = s.dead + EXCLUDED.dead,
                 spend_micros = s.spend_micros + EXCLUDED.spend_micros,
                 latency_sum_ms = s.latency_sum_ms + EXCLUDED.latency_sum_ms,
                 latency_hist = CASE WHEN cardinality(EXCLUDED.latency_hist) = 0 THEN s.latency_hist
                                     ELSE latency_hist_add(s.latency_hist, EXCLUDED.latency_hist) END",
            table = table(granularity),
            granularity = granularity.as_str(),
        )
    };
    let sql = format!(
        "WITH d AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::bigint[],
                                  $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[],
                                  $14::bigint[])
                 WITH ORDINALITY AS d(granularity, campaign_id, partner_id, bucket, released, delivered, failed,
                                      throttled, dead, spend, latency_sum, latency_count, i)
         ),
         minutes AS ({})
         {}",
        upsert(Granularity::Minute),
        upsert(Granularity::Hour),
    );
    db.execute(
        &sql,
        &[
            &granularity,
            &campaign,
            &partner,
            &bucket,
            &cols[0],
            &cols[1],
            &cols[2],
            &cols[3],
            &cols[4],
            &cols[5],
            &cols[6],
            &hist,
            &width,
            &cols[7],
        ],
    )
    .await?;
    Ok(())
}

/// Takes releases back (`clicks` per key; the pacer took the batch back: never sent, or its message lost), never
/// below zero: a release counted before the rollups existed has nothing to take back.
pub async fn take_back_released(db: &impl GenericClient, taken: BTreeMap<StatsKey, i64>) -> Result<(), DbError> {
    if taken.is_empty() {
        return Ok(());
    }
    for granularity in Granularity::ALL {
        let table = table(granularity);
        let rows: Vec<_> = taken.iter().filter(|(k, _)| k.granularity == granularity).collect();
        let campaign: Vec<&str> = rows.iter().map(|(k, _)| k.campaign_id.as_str()).collect();
        let partner: Vec<&str> = rows.iter().map(|(k, _)| k.partner_id.as_str()).collect();
        let bucket: Vec<DateTime<Utc>> = rows.iter().map(|(k, _)| k.bucket).collect();
        let clicks: Vec<i64> = rows.iter().map(|(_, c)| **c).collect();
        db.execute(
            &format!(
                "UPDATE {table} s SET released = GREATEST(s.released - t.clicks, 0)
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
                      AS t(campaign_id, partner_id, bucket, clicks)
                 WHERE s.campaign_id = t.campaign_id AND s.partner_id = t.partner_id AND s.bucket = t.bucket"
            ),
            &[&campaign, &partner, &bucket, &clicks],
        )
        .await?;
    }
    Ok(())
}

fn table(granularity: Granularity) -> &'static str {
    match granularity {
        Granularity::Minute => "delivery_stats_minute",
        Granularity::Hour => "delivery_stats_hour",
    }
}

/// Whose statistics to read.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Campaign(&'a str),
    Partner(&'a str),
}

/// The stored buckets of `scope` in `[from, to)` at `granularity` (one row per bucket and partner, or campaign),
/// for [`crate::stats::series`].
pub async fn buckets(
    db: &impl GenericClient,
    scope: Scope<'_>,
    granularity: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, Counts)>, DbError> {
    let table = table(granularity);
    let (column, id) = match scope {
        Scope::Campaign(id) => ("campaign_id", id),
        Scope::Partner(id) => ("partner_id", id),
    };
    let rows = db
        .query(
            &format!(
                "SELECT bucket, released, delivered, failed, throttled, dead, spend_micros, latency_sum_ms,
                        latency_hist
                 FROM {table} WHERE {column} = $1 AND bucket >= $2 AND bucket < $3"
            ),
            &[&id, &from, &to],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let hist: Vec<i32> = r.get("latency_hist");
            let hist: Vec<i64> = hist.into_iter().map(i64::from).collect();
            let counts = Counts {
                released: r.get("released"),
                delivered: r.get("delivered"),
                failed: r.get("failed"),
                throttled: r.get("throttled"),
                dead: r.get("dead"),
                spend_micros: r.get("spend_micros"),
                latency_sum_ms: r.get("latency_sum_ms"),
                latency: LatencyHistogram::from_counts(&hist),
            };
            (r.get("bucket"), counts)
        })
        .collect())
}

/// What a campaign's local day view is built from: the day ledger's released clicks, the clicks waiting in
/// pending batches due before the day ends, and the day's minute buckets (all partners added up).
pub async fn day_counters(
    db: &impl GenericClient,
    campaign_id: &str,
    day: &crate::pacing::LocalDay,
) -> Result<(u64, u64, Vec<MinuteActuals>), DbError> {
    let row = db
        .query_one(
            "SELECT (SELECT coalesce(sum(released_clicks), 0)::bigint FROM campaign_day_ledger
                     WHERE campaign_id = $1 AND local_day = $2),
                    (SELECT coalesce(sum(click_count - settled_clicks), 0)::bigint FROM batches
                     WHERE campaign_id = $1 AND state = 'pending' AND due_at < $3)",
            &[&campaign_id, &day.date, &day.end],
        )
        .await?;
    let minutes = db
        .query(
            "SELECT bucket, sum(released)::bigint, sum(delivered)::bigint, sum(dead)::bigint
             FROM delivery_stats_minute WHERE campaign_id = $1 AND bucket >= $2 AND bucket < $3
             GROUP BY bucket ORDER BY bucket",
            &[&campaign_id, &day.start, &day.end],
        )
        .await?
        .iter()
        .map(|r| MinuteActuals { start: r.get(0), released: r.get(1), delivered: r.get(2), dead: r.get(3) })
        .collect();
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok((count(0), count(1), minutes))
}

/// A campaign's money from the day ledger: spent and reserved on `day`, and over every day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub spent_day: i64,
    pub reserved_day: i64,
    pub spent_total: i64,
    pub reserved_total: i64,
}

pub async fn spend(db: &impl GenericClient, campaign_id: &str, day: chrono::NaiveDate) -> Result<Spend, DbError> {
    let row = db
        .query_one(
            "SELECT coalesce(sum(spend_micros) FILTER (WHERE local_day = $2), 0)::bigint,
                    coalesce(sum(reserved_micros) FILTER (WHERE local_day = $2), 0)::bigint,
                    coalesce(sum(spend_micros), 0)::bigint, coalesce(sum(reserved_micros), 0)::bigint
             FROM campaign_day_ledger WHERE campaign_id = $1",
            &[&campaign_id, &day],
        )
        .await?;
    Ok(Spend { spent_day: row.get(0), reserved_day: row.get(1), spent_total: row.get(2), reserved_total: row.get(3) })
}
