//! What the bridge reads and writes: its lease on a batch, the batch's clicks with their delivery history,
//! appended delivery results, the batch's end, the day ledger, partner health and the event outbox.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::DbError;
use super::stats::{self, StatsKey};
use crate::delivery::pace::{AcceptedWindow, CampaignLimits, CampaignStream, SendPace, SlotGrant, WindowSends};
use crate::delivery::{ClickForDelivery, ObservedHealth, PartnerHealth, idempotency_key};
use crate::domain::events::{ClickEvent, LogEntries};
use crate::domain::{CampaignId, ClickId, PartnerId};
use crate::stats::{self as stats_domain, Attempt, AttemptOutcome, Counts};

/// The bridge's hold on a batch it is delivering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLease {
    pub batch_id: i64,
    pub fence: i64,
    pub campaign_id: CampaignId,
    pub partner_id: PartnerId,
    pub release_at: Option<DateTime<Utc>>,
    pub spread_seconds: u32,
    /// Clicks of the batch, delivered or not.
    pub clicks: u32,
    /// The campaign's rate limits now (they may have changed since the release): with any, its requests also
    /// take slots of the campaign's own send stream.
    pub campaign_limits: CampaignLimits,
    /// What one delivered click of this batch costs: the price its release reserved at (the campaign's price
    /// now for a batch released before reservations were recorded).
    pub price_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchClaim {
    Acquired(BatchLease),
    /// The message's fence is not the batch's, or the batch is finished or cancelled: acknowledge, do nothing.
    Stale {
        state: Option<String>,
    },
    /// Another bridge is delivering this batch right now.
    Busy,
}

/// Takes the batch for delivery if `fence` is current: the batch becomes (or stays) `queued` with its queued
/// lease running to `queued_until` at least, so no pacer takes it back meanwhile, and the bridge's own lease
/// (`hold_until`) keeps a redelivered copy of the message from sending in parallel.
pub async fn take_batch(
    db: &impl GenericClient,
    batch_id: i64,
    fence: i64,
    now: DateTime<Utc>,
    hold_until: DateTime<Utc>,
    queued_until: DateTime<Utc>,
) -> Result<BatchClaim, DbError> {
    let row = db
        .query_opt(
            "UPDATE batches b SET state = 'queued', delivery_lease_until = $4,
                    lease_expires_at = GREATEST(CASE WHEN b.state = 'queued' THEN b.lease_expires_at END, $5),
                    released_at = COALESCE(b.released_at, $3)
             FROM campaigns c
             WHERE b.batch_id = $1 AND b.fence = $2 AND b.state IN ('claimed', 'queued')
               AND (b.delivery_lease_until IS NULL OR b.delivery_lease_until < $3)
               AND c.campaign_id = b.campaign_id
             RETURNING b.campaign_id, b.partner_id, b.release_at, b.spread_seconds, b.click_count,
                       c.max_per_second, c.max_per_minute, c.max_per_hour,
                       CASE WHEN b.reserved_clicks > 0 THEN b.reserved_micros / b.reserved_clicks
                            ELSE c.cost_per_click_micros END AS price_micros",
            &[&batch_id, &fence, &now, &hold_until, &queued_until],
        )
        .await?;
    if let Some(row) = row {
        return Ok(BatchClaim::Acquired(BatchLease {
            batch_id,
            fence,
            campaign_id: parse(row.get("campaign_id"), CampaignId::parse)?,
            partner_id: parse(row.get("partner_id"), PartnerId::parse)?,
            release_at: row.get("release_at"),
            spread_seconds: row.get::<_, i32>("spread_seconds").max(1) as u32,
            clicks: row.get::<_, i32>("click_count").max(1) as u32,
            campaign_limits: CampaignLimits {
                per_second: limit(&row, "max_per_second"),
                per_minute: limit(&row, "max_per_minute"),
                per_hour: limit(&row, "max_per_hour"),
            },
            price_micros: row.get("price_micros"),
        }));
    }
    let current = db.query_opt("SELECT state, fence FROM batches WHERE batch_id = $1", &[&batch_id]).await?;
    Ok(match current {
        Some(row)
            if row.get::<_, i64>("fence") == fence && matches!(row.get::<_, &str>("state"), "claimed" | "queued") =>
        {
            BatchClaim::Busy
        }
        Some(row) => BatchClaim::Stale { state: Some(row.get("state")) },
        None => BatchClaim::Stale { state: None },
    })
}

/// Gives the bridge's lease up (the batch stays queued for the next copy of its message).
pub async fn release_batch(db: &impl GenericClient, lease: &BatchLease) -> Result<(), DbError> {
    db.execute(
        "UPDATE batches SET delivery_lease_until = NULL WHERE batch_id = $1 AND fence = $2",
        &[&lease.batch_id, &lease.fence],
    )
    .await?;
    Ok(())
}

/// The batch's message went back to the queue: its queued lease runs to `until` at least (the instant the copy
/// becomes visible plus the grace), so no pacer takes the batch back while the copy waits out its delay.
pub async fn extend_queued_lease(
    db: &impl GenericClient,
    batch_id: i64,
    fence: i64,
    until: DateTime<Utc>,
) -> Result<(), DbError> {
    db.execute(
        "UPDATE batches SET lease_expires_at = GREATEST(lease_expires_at, $3)
         WHERE batch_id = $1 AND fence = $2 AND state = 'queued'",
        &[&batch_id, &fence, &until],
    )
    .await?;
    Ok(())
}

/// A click of the batch and where its delivery stands.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingClick {
    pub click: ClickForDelivery,
    pub ingested_at: DateTime<Utc>,
    /// Attempts already recorded for this click.
    pub attempts: u32,
    /// Attempts recorded before its last replay (0 if never replayed): a replayed click gets its full retry
    /// policy again.
    pub attempts_before_replay: u32,
    /// Earliest next attempt (from the last retryable failure's backoff).
    pub not_before: Option<DateTime<Utc>>,
    /// Final already: delivered (by any batch) or dead-lettered.
    pub finished: Option<FinalOutcome>,
    /// Its place in the batch (upload row order): its share of the batch's spread.
    pub position: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalOutcome {
    Delivered,
    Dead,
}

/// The batch's clicks in row order, each with its delivery history: check before sending.
pub async fn batch_clicks(db: &impl GenericClient, lease: &BatchLease) -> Result<Vec<PendingClick>, DbError> {
    let rows = db
        .query(
            // The batch's history in one scan of its results (none on a first pass), not a probe per click. A
            // click belongs to one batch, so its results are all the batch's.
            "WITH h AS (
                 SELECT r.campaign_id, r.click_id, max(r.attempt) AS attempts, max(r.next_attempt_at) AS not_before,
                        bool_or(r.outcome = 'delivered') AS delivered,
                        count(*) FILTER (WHERE r.outcome = 'dead') > count(*) FILTER (WHERE r.outcome = 'replayed')
                            AS dead,
                        max(r.attempt) FILTER (WHERE r.outcome = 'replayed') AS replayed_at
                 FROM delivery_results r
                 WHERE r.batch_id = $1
                 GROUP BY r.campaign_id, r.click_id
             )
             SELECT c.campaign_id, c.click_id, c.clicked_at, c.ip, c.user_agent, c.landing_url, c.sub_id,
                    c.attributes, c.ingested_at,
                    COALESCE(h.attempts, 0) AS attempts, COALESCE(h.replayed_at, 0) AS replayed_at, h.not_before,
                    COALESCE(h.delivered, false) AS delivered, COALESCE(h.dead, false) AS dead
             FROM clicks c
             LEFT JOIN h ON h.campaign_id = c.campaign_id AND h.click_id = c.click_id
             WHERE c.batch_id = $1
             ORDER BY c.row_number",
            &[&lease.batch_id],
        )
        .await?;
    rows.iter()
        .enumerate()
        .map(|(position, row)| {
            let campaign_id = parse(row.get("campaign_id"), CampaignId::parse)?;
            let click_id = parse(row.get("click_id"), ClickId::parse)?;
            let attributes = match row.get::<_, serde_json::Value>("attributes") {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            let finished = if row.get("delivered") {
                Some(FinalOutcome::Delivered)
            } else if row.get("dead") {
                Some(FinalOutcome::Dead)
            } else {
                None
            };
            Ok(PendingClick {
                click: ClickForDelivery {
                    idempotency_key: idempotency_key(&lease.partner_id, &campaign_id, &click_id),
                    campaign_id,
                    click_id,
                    clicked_at: row.get("clicked_at"),
                    ip: row.get("ip"),
                    user_agent: row.get("user_agent"),
                    landing_url: row.get("landing_url"),
                    sub_id: row.get("sub_id"),
                    attributes,
                    batch_id: lease.batch_id,
                },
                ingested_at: row.get("ingested_at"),
                attempts: row.get::<_, i32>("attempts").max(0) as u32,
                attempts_before_replay: row.get::<_, i32>("replayed_at").max(0) as u32,
                not_before: row.get("not_before"),
                finished,
                position,
            })
        })
        .collect()
}

/// One attempt's result, appended.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub click_id: ClickId,
    pub attempt: u32,
    /// `delivered`, `retrying`, `dead` or `skipped`.
    pub outcome: &'static str,
    pub http_status: Option<u16>,
    pub latency_ms: Option<u32>,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub ambiguous: bool,
    pub at: DateTime<Utc>,
}

/// The batch's clicks as [`batch_clicks`] read them: how many, and how many were already final.
pub fn tally_before(clicks: &[PendingClick]) -> BatchTally {
    BatchTally {
        clicks: clicks.len() as u64,
        delivered: clicks.iter().filter(|c| c.finished == Some(FinalOutcome::Delivered)).count() as u64,
        dead: clicks.iter().filter(|c| c.finished == Some(FinalOutcome::Dead)).count() as u64,
        finished: false,
    }
}

/// How the batch stands after this delivery pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct BatchTally {
    pub clicks: u64,
    pub delivered: u64,
    pub dead: u64,
    /// The batch reached a final state in this pass.
    pub finished: bool,
}

/// Appends the results (`before`: the batch's clicks and those already final when the pass read them), ends the
/// batch when every click is final (delivered, partially failed or dead) with the
/// day ledger counting it, saves the partner's health (`None`: unchanged) and queues the events: one
/// transaction, fenced.
pub async fn record_pass(
    client: &mut tokio_postgres::Client,
    lease: &BatchLease,
    before: BatchTally,
    records: &[DeliveryRecord],
    health: Option<&ObservedHealth>,
    events: &LogEntries,
) -> Result<BatchTally, DbError> {
    let tx = client.transaction().await?;
    let mut counted: Vec<Attempt> = Vec::new();
    // One statement for the whole pass (a statement per click costs a prepare and an execute round trip each).
    // A second `delivered` row for the same click (a race with a redelivered copy) is absorbed by the partial
    // unique index: the click stays delivered once.
    if !records.is_empty() {
        let click_ids: Vec<&str> = records.iter().map(|r| r.click_id.as_str()).collect();
        let attempts: Vec<i32> = records.iter().map(|r| r.attempt as i32).collect();
        let outcomes: Vec<&str> = records.iter().map(|r| r.outcome).collect();
        let statuses: Vec<Option<i32>> = records.iter().map(|r| r.http_status.map(i32::from)).collect();
        let latencies: Vec<Option<i32>> =
            records.iter().map(|r| r.latency_ms.map(|l| l.min(i32::MAX as u32) as i32)).collect();
        let errors: Vec<Option<&str>> = records.iter().map(|r| r.error.as_deref()).collect();
        let next: Vec<Option<DateTime<Utc>>> = records.iter().map(|r| r.next_attempt_at).collect();
        let ambiguous: Vec<bool> = records.iter().map(|r| r.ambiguous).collect();
        let at: Vec<DateTime<Utc>> = records.iter().map(|r| r.at).collect();
        let inserted = tx
            .query(
                "INSERT INTO delivery_results (batch_id, fence, campaign_id, click_id, partner_id, attempt, outcome,
                                           http_status, latency_ms, error, next_attempt_at, ambiguous, recorded_at)
             SELECT $1, $2, $3, r.click_id, $4, r.attempt, r.outcome, r.status, r.latency, r.error, r.next,
                    r.ambiguous, r.at
             FROM unnest($5::text[], $6::int[], $7::text[], $8::int[], $9::int[], $10::text[], $11::timestamptz[],
                         $12::bool[], $13::timestamptz[])
                  AS r(click_id, attempt, outcome, status, latency, error, next, ambiguous, at)
             ON CONFLICT (campaign_id, click_id) WHERE outcome = 'delivered' DO NOTHING
             RETURNING click_id, outcome = 'delivered' AS delivered",
                &[
                    &lease.batch_id,
                    &lease.fence,
                    &lease.campaign_id.as_str(),
                    &lease.partner_id.as_str(),
                    &click_ids,
                    &attempts,
                    &outcomes,
                    &statuses,
                    &latencies,
                    &errors,
                    &next,
                    &ambiguous,
                    &at,
                ],
            )
            .await?;
        // What the rollups count: every attempt recorded, a delivery only if its row went in.
        let delivered_now: HashSet<&str> =
            inserted.iter().filter(|r| r.get::<_, bool>("delivered")).map(|r| r.get("click_id")).collect();
        counted = records
            .iter()
            .filter_map(|r| {
                let outcome = match r.outcome {
                    "delivered" if delivered_now.contains(r.click_id.as_str()) => AttemptOutcome::Delivered,
                    "retrying" => AttemptOutcome::Retrying,
                    "dead" => AttemptOutcome::Dead,
                    _ => return None,
                };
                Some(Attempt { at: r.at, outcome, http_status: r.http_status, latency_ms: r.latency_ms })
            })
            .collect();
    }

    if !events.is_empty() {
        // One row for the pass's entries: rows, not events, are what the outbox pays for.
        let payload =
            serde_json::to_value(events).map_err(|e| DbError::Invalid(format!("event not encodable: {e}")))?;
        tx.execute("INSERT INTO event_outbox (event) VALUES ($1)", &[&payload]).await?;
    }

    // The batch is leased to this pass (fenced), so what it read before sending plus what it recorded is the
    // whole story of its clicks.
    let mut tally = BatchTally { finished: false, ..before };
    for r in records {
        match r.outcome {
            "delivered" => tally.delivered += 1,
            "dead" => tally.dead += 1,
            _ => {}
        }
    }
    if tally.delivered + tally.dead >= tally.clicks {
        let state = match (tally.delivered, tally.dead) {
            (_, 0) => "delivered",
            (0, _) => "dead",
            _ => "partially_failed",
        };
        let ended = tx
            .execute(
                "UPDATE batches SET state = $3, finished_at = now(), delivery_lease_until = NULL,
                        lease_expires_at = NULL
                 WHERE batch_id = $1 AND fence = $2 AND state = 'queued'",
                &[&lease.batch_id, &lease.fence, &state],
            )
            .await?;
        if ended == 1 {
            tally.finished = true;
            // Delivered clicks and their spend count on the row the claim's reservation wrote (its day, at its
            // price per click), so a price change or a spread across local midnight since cannot break the
            // row's CHECKs and roll the whole pass back. A replayed batch counts only what it delivered since its
            // replay (its settled clicks were counted when it first ended). Batches claimed before reservations were recorded use
            // their release day and today's price, bounded by what the row reserved. (An UPDATE, not an upsert:
            // CHECK constraints judge an upsert's proposed row before the conflict turns it into an update.)
            let counted = tx
                .execute(
                    "UPDATE campaign_day_ledger l
                     SET delivered_clicks = LEAST(l.delivered_clicks + x.delivered, l.released_clicks - l.failed_clicks),
                         failed_clicks = LEAST(l.failed_clicks + $3,
                                               l.released_clicks - LEAST(l.delivered_clicks + x.delivered,
                                                                         l.released_clicks - l.failed_clicks)),
                         spend_micros = LEAST(l.spend_micros + x.delivered * x.price, l.reserved_micros),
                         updated_at = now()
                     FROM (SELECT b.campaign_id, GREATEST($2::bigint - b.settled_clicks, 0) AS delivered,
                                  COALESCE(b.reserved_day,
                                           (COALESCE(b.release_at, now()) AT TIME ZONE c.time_zone)::date) AS day,
                                  CASE WHEN b.reserved_clicks > 0 THEN b.reserved_micros / b.reserved_clicks
                                       ELSE c.cost_per_click_micros END AS price
                           FROM batches b JOIN campaigns c USING (campaign_id)
                           WHERE b.batch_id = $1) x
                     WHERE l.campaign_id = x.campaign_id AND l.local_day = x.day",
                    &[&lease.batch_id, &(tally.delivered as i64), &(tally.dead as i64)],
                )
                .await?;
            if counted == 0 {
                tracing::warn!(batch_id = lease.batch_id, "no ledger row for the batch's release day");
            }
        }
    }
    // After the ledger row (the pacer's claims take theirs in the same order).
    stats::add(&tx, rollup(lease, &counted)).await?;
    // Last, and only when it changed: every delivery pass and every send-slot reservation for the partner
    // goes through this row's lock.
    if let Some(health) = health {
        record_health(&tx, &lease.partner_id, health).await?;
    }
    tx.commit().await?;
    Ok(tally)
}

/// The pass's attempts as rollup deltas of its campaign and partner, delivered clicks at the batch's price.
fn rollup(lease: &BatchLease, attempts: &[Attempt]) -> BTreeMap<StatsKey, Counts> {
    stats_domain::tally(attempts)
        .into_iter()
        .map(|((granularity, bucket), mut counts)| {
            counts.spend_micros = counts.delivered.saturating_mul(lease.price_micros.max(0));
            let key = StatsKey {
                campaign_id: lease.campaign_id.to_string(),
                partner_id: lease.partner_id.to_string(),
                granularity,
                bucket,
            };
            (key, counts)
        })
        .collect()
}

/// Records what a pass observed of a partner's health, as arithmetic on the row as it is now (see
/// [`crate::delivery::HealthChange`]): the stored allowance, recovered for its idle time as
/// [`PartnerHealth::allowance_after`] does, times the pass's factor plus its increase; the failure streak
/// continued or restarted; the pause only ever extended.
pub async fn record_health(
    db: &impl GenericClient,
    partner_id: &PartnerId,
    observed: &ObservedHealth,
) -> Result<(), DbError> {
    use crate::delivery::health::{MIN_ALLOWANCE, RECOVERY_PER_IDLE_SECOND};
    let change = &observed.change;
    db.execute(
        "INSERT INTO partner_health (partner_id, allowance, retry_after_until, consecutive_failures,
                                     allowance_changed_at, updated_at)
         VALUES ($1, LEAST(1.0, GREATEST($6::float8, $2::float8 + $3::float8)), $4, $5::int, now(), now())
         ON CONFLICT (partner_id) DO UPDATE SET
             allowance = LEAST(1.0, GREATEST($6,
                 LEAST(1.0, partner_health.allowance
                            + GREATEST(0, extract(epoch FROM now() - partner_health.allowance_changed_at))::float8
                              * $7::float8)
                 * $2 + $3)),
             allowance_changed_at = now(),
             retry_after_until = GREATEST(partner_health.retry_after_until, EXCLUDED.retry_after_until),
             consecutive_failures = CASE WHEN $8::bool THEN $5::int ELSE partner_health.consecutive_failures + $5::int END,
             updated_at = now()",
        &[
            &partner_id.as_str(),
            &change.factor,
            &change.increase,
            &change.retry_after_until,
            &(change.failures.min(i32::MAX as u32) as i32),
            &MIN_ALLOWANCE,
            &RECOVERY_PER_IDLE_SECOND,
            &change.streak_ended,
        ],
    )
    .await?;
    Ok(())
}

/// The partner's observed health at `now` (defaults for a partner never seen), its allowance recovered for the
/// time the row has had no news (see [`PartnerHealth::allowance_after`]).
pub async fn partner_health(
    db: &impl GenericClient,
    partner_id: &PartnerId,
    now: DateTime<Utc>,
) -> Result<PartnerHealth, DbError> {
    let row = db
        .query_opt(
            "SELECT allowance, retry_after_until, consecutive_failures, allowance_changed_at FROM partner_health
             WHERE partner_id = $1",
            &[&partner_id.as_str()],
        )
        .await?;
    Ok(match row {
        Some(r) => {
            let stored = PartnerHealth {
                allowance: r.get("allowance"),
                retry_after_until: r.get("retry_after_until"),
                consecutive_failures: r.get::<_, i32>("consecutive_failures").max(0) as u32,
            }
            .normalised();
            PartnerHealth { allowance: stored.allowance_after(r.get("allowance_changed_at"), now), ..stored }
        }
        None => PartnerHealth::default(),
    })
}

/// Requests a partner accepted, by the instant of each answer (counted per second into its send pace).
pub type Accepted = [(DateTime<Utc>, u32)];

/// The rate a reservation spaces its slots at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PaceRate {
    /// The rate the bridges learn from the partner, starting at this one.
    Learned { initial: f64 },
    /// A partner configured at this rate, under this AIMD allowance (see
    /// [`crate::delivery::pace::SendPace::configured_rate_at`]).
    Configured { rate_per_second: u32, allowance: f64 },
}

/// What a reservation asks for: up to `want` slots from `now`, none further than `horizon` ahead, at `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotRequest {
    pub want: usize,
    pub now: DateTime<Utc>,
    pub rate: PaceRate,
    pub horizon: chrono::TimeDelta,
}

/// A campaign whose requests also take slots of its own send stream, under these limits (see
/// [`crate::delivery::pace::CampaignStream`]).
pub type CampaignPace<'a> = (&'a CampaignId, CampaignLimits);

/// Reserves up to `want` send slots for a partner (see [`crate::delivery::pace`]) within `horizon`, after
/// counting the requests it accepted since the caller's last call: one short transaction under the partner's
/// health row lock (and then the campaign's send stream's, for a campaign with a rate limit), so every
/// bridge draws from the same evenly spaced stream.
pub async fn reserve_send_slots(
    client: &mut tokio_postgres::Client,
    partner_id: &PartnerId,
    campaign: Option<CampaignPace<'_>>,
    SlotRequest { want, now, rate, horizon }: SlotRequest,
    accepted: &Accepted,
) -> Result<SlotGrant, DbError> {
    let tx = client.transaction().await?;
    let (mut pace, paused_until) = lock_send_pace(&tx, partner_id, accepted).await?;
    let rate = match rate {
        PaceRate::Learned { initial } => pace.learned_rate_at(now, initial),
        PaceRate::Configured { rate_per_second, allowance } => pace.configured_rate_at(now, rate_per_second, allowance),
    };
    let grant = match campaign {
        Some((campaign_id, limits)) => {
            // Locked after the partner's row, always in that order: a campaign has one partner.
            tx.execute(
                "INSERT INTO campaign_send_pace (campaign_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&campaign_id.as_str()],
            )
            .await?;
            let row = tx
                .query_one(
                    "SELECT next_send_at, minute_start, minute_sends, hour_start, hour_sends
                     FROM campaign_send_pace WHERE campaign_id = $1 FOR UPDATE",
                    &[&campaign_id.as_str()],
                )
                .await?;
            let sends = |start: &str, count: &str| WindowSends {
                start: row.get(start),
                count: row.get::<_, i32>(count).max(0) as u32,
            };
            let mut stream = CampaignStream {
                next_slot: row.get("next_send_at"),
                minute: sends("minute_start", "minute_sends"),
                hour: sends("hour_start", "hour_sends"),
            };
            let grant = pace.reserve_within(want, now, paused_until, rate, horizon, Some((&mut stream, limits)));
            let count = |w: WindowSends| i32::try_from(w.count).unwrap_or(i32::MAX);
            tx.execute(
                "UPDATE campaign_send_pace SET next_send_at = $2, minute_start = $3, minute_sends = $4,
                        hour_start = $5, hour_sends = $6, updated_at = now()
                 WHERE campaign_id = $1",
                &[
                    &campaign_id.as_str(),
                    &stream.next_slot,
                    &stream.minute.start,
                    &count(stream.minute),
                    &stream.hour.start,
                    &count(stream.hour),
                ],
            )
            .await?;
            grant
        }
        None => pace.reserve_within(want, now, paused_until, rate, horizon, None),
    };
    store_send_pace(&tx, partner_id, &pace, None).await?;
    tx.commit().await?;
    Ok(grant)
}

/// The partner throttled: counts what it accepted, sets the rate to that and pauses every bridge until
/// `paused_until` (once per overload episode: a throttle while already paused only extends the pause).
pub async fn record_throttle(
    client: &mut tokio_postgres::Client,
    partner_id: &PartnerId,
    now: DateTime<Utc>,
    paused_until: DateTime<Utc>,
    accepted: &Accepted,
) -> Result<(), DbError> {
    with_send_pace(client, partner_id, accepted, Some(paused_until), |pace, current_pause| {
        if current_pause.is_none_or(|until| until <= now) {
            pace.on_throttled(now, paused_until);
        } else {
            pace.next_slot = pace.next_slot.max(Some(paused_until));
        }
    })
    .await
}

/// Counts accepted requests without reserving (what a delivery pass sent after its last reservation).
pub async fn record_accepted(
    client: &mut tokio_postgres::Client,
    partner_id: &PartnerId,
    accepted: &Accepted,
) -> Result<(), DbError> {
    if accepted.is_empty() {
        return Ok(());
    }
    with_send_pace(client, partner_id, accepted, None, |_, _| ()).await
}

/// The partner's stored send pace (for reports and tests).
pub async fn send_pace(db: &impl GenericClient, partner_id: &PartnerId) -> Result<Option<SendPace>, DbError> {
    let row = db.query_opt(&format!("{PACE_COLUMNS} WHERE partner_id = $1"), &[&partner_id.as_str()]).await?;
    Ok(row.as_ref().map(pace_from_row))
}

const PACE_COLUMNS: &str =
    "SELECT send_rate, send_rate_learned, send_rate_grown_at, send_rate_recover_to, next_send_at,
                                   accepted_second,
                                   accepted_in_second, accepted_previous, retry_after_until
                            FROM partner_health";

fn pace_from_row(row: &tokio_postgres::Row) -> SendPace {
    SendPace {
        rate: row.get("send_rate"),
        learned: row.get("send_rate_learned"),
        grown_at: row.get("send_rate_grown_at"),
        recover_to: row.get("send_rate_recover_to"),
        next_slot: row.get("next_send_at"),
        window: AcceptedWindow {
            second: row.get("accepted_second"),
            accepted: row.get::<_, i32>("accepted_in_second").max(0) as u32,
            previous: row.get::<_, i32>("accepted_previous").max(0) as u32,
        },
    }
}

/// Loads the partner's pace under its row lock, counts `accepted`, applies `change` (given the current pause),
/// extends the pause to `pause` if later, and stores it all in the same transaction.
async fn with_send_pace<R>(
    client: &mut tokio_postgres::Client,
    partner_id: &PartnerId,
    accepted: &Accepted,
    pause: Option<DateTime<Utc>>,
    change: impl FnOnce(&mut SendPace, Option<DateTime<Utc>>) -> R,
) -> Result<R, DbError> {
    let tx = client.transaction().await?;
    let (mut pace, paused_until) = lock_send_pace(&tx, partner_id, accepted).await?;
    let result = change(&mut pace, paused_until);
    store_send_pace(&tx, partner_id, &pace, pause).await?;
    tx.commit().await?;
    Ok(result)
}

/// The partner's pace under its row lock (the row made if missing), with `accepted` counted, and its current
/// pause.
async fn lock_send_pace(
    tx: &tokio_postgres::Transaction<'_>,
    partner_id: &PartnerId,
    accepted: &Accepted,
) -> Result<(SendPace, Option<DateTime<Utc>>), DbError> {
    let select = format!("{PACE_COLUMNS} WHERE partner_id = $1 FOR UPDATE");
    let row = match tx.query_opt(&select, &[&partner_id.as_str()]).await? {
        Some(row) => row,
        None => {
            tx.execute(
                "INSERT INTO partner_health (partner_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&partner_id.as_str()],
            )
            .await?;
            tx.query_one(&select, &[&partner_id.as_str()]).await?
        }
    };
    let mut pace = pace_from_row(&row);
    for (at, n) in accepted {
        pace.window.add(*at, *n);
    }
    Ok((pace, row.get("retry_after_until")))
}

/// Stores the partner's pace, extending its pause to `pause` if later.
async fn store_send_pace(
    tx: &tokio_postgres::Transaction<'_>,
    partner_id: &PartnerId,
    pace: &SendPace,
    pause: Option<DateTime<Utc>>,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE partner_health SET send_rate = $2, send_rate_learned = $3, send_rate_grown_at = $4, next_send_at = $5,
                accepted_second = $6, accepted_in_second = $7, accepted_previous = $8,
                retry_after_until = GREATEST(retry_after_until, $9), send_rate_recover_to = $10, updated_at = now()
         WHERE partner_id = $1",
        &[
            &partner_id.as_str(),
            &pace.rate,
            &pace.learned,
            &pace.grown_at,
            &pace.next_slot,
            &pace.window.second,
            &(pace.window.accepted.min(i32::MAX as u32) as i32),
            &(pace.window.previous.min(i32::MAX as u32) as i32),
            &pause,
            &pace.recover_to,
        ],
    )
    .await?;
    Ok(())
}

/// Most of an unreadable message's body that is kept.
pub const MAX_UNREADABLE_BODY: usize = 64 * 1024;

/// Keeps a click-queue message the bridge cannot read, with the reason.
pub async fn record_unreadable(
    db: &impl GenericClient,
    message_id: Option<&str>,
    body: &str,
    reason: &str,
) -> Result<(), DbError> {
    let mut end = body.len().min(MAX_UNREADABLE_BODY);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    db.execute(
        "INSERT INTO unreadable_messages (message_id, body, reason) VALUES ($1, $2, $3)",
        &[&message_id, &&body[..end], &reason],
    )
    .await?;
    Ok(())
}

/// Up to `limit` outbox rows (each the entries of one delivery pass), oldest first, locked so that concurrent
/// flushers take different ones.
pub async fn take_outbox(tx: &tokio_postgres::Transaction<'_>, limit: i64) -> Result<Vec<(i64, LogEntries)>, DbError> {
    let rows = tx
        .query("SELECT event_id, event FROM event_outbox ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED", &[&limit])
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let event_id: i64 = row.get("event_id");
        // Rows written before batch events were one click event, or an array of them.
        let mut entries = LogEntries::default();
        match row.get::<_, serde_json::Value>("event") {
            serde_json::Value::Array(values) => {
                for value in values {
                    match serde_json::from_value::<ClickEvent>(value) {
                        Ok(e) => entries.clicks.push(e),
                        Err(e) => tracing::warn!(event_id, error = %e, "unreadable outbox event skipped"),
                    }
                }
            }
            value => match serde_json::from_value::<LogEntries>(value.clone()) {
                Ok(e) if !e.is_empty() => entries = e,
                _ => match serde_json::from_value::<ClickEvent>(value) {
                    Ok(e) => entries.clicks.push(e),
                    Err(e) => tracing::warn!(event_id, error = %e, "unreadable outbox row skipped"),
                },
            },
        }
        out.push((event_id, entries));
    }
    Ok(out)
}

pub async fn delete_outbox(tx: &tokio_postgres::Transaction<'_>, ids: &[i64]) -> Result<(), DbError> {
    tx.execute("DELETE FROM event_outbox WHERE event_id = ANY($1)", &[&ids]).await?;
    Ok(())
}

/// Events waiting for the event log.
pub async fn outbox_depth(db: &impl GenericClient) -> Result<i64, DbError> {
    Ok(db
        .query_one(
            "SELECT coalesce(sum(CASE WHEN jsonb_typeof(event) = 'array' THEN jsonb_array_length(event) ELSE 1 END),
                             0)::bigint
             FROM event_outbox",
            &[],
        )
        .await?
        .get(0))
}

/// Per batch: clicks by delivery outcome, for reports.
pub async fn outcomes_by_batch(db: &impl GenericClient, batch_id: i64) -> Result<HashMap<String, i64>, DbError> {
    let rows = db
        .query("SELECT outcome, count(*) FROM delivery_results WHERE batch_id = $1 GROUP BY outcome", &[&batch_id])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn parse<T, E: std::fmt::Display>(value: String, f: impl Fn(String) -> Result<T, E>) -> Result<T, DbError> {
    f(value).map_err(|e| DbError::Invalid(e.to_string()))
}

/// A campaign's rate limit from its column (positive by the schema's check).
fn limit(row: &tokio_postgres::Row, column: &str) -> Option<u32> {
    row.get::<_, Option<i32>>(column).map(|n| n.max(1) as u32)
}
