//! The pacer's claim: one short transaction that locks the pacing counters of the campaigns with due batches
//! (`FOR UPDATE SKIP LOCKED`: campaigns another pacer holds are left to it), locks those campaigns' due batches
//! (`SKIP LOCKED` too) and the counters of their partners that have a rate, plans the coming minute with the
//! pure engine, and writes the claims (lease + new fence), the deferrals and the reservations together. No
//! network call happens inside it: messages are sent after commit, and the lease brings a batch back if that
//! never happens.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::{Client, Row};

use super::DbError;
use super::campaigns;
use super::stats::{self, StatsKey};
use crate::domain::{CampaignId, Micros, PartnerId};
use crate::pacing::{Overdue, PacingState, PartnerLimit, RateWindow, WindowCounts};
use crate::release::{CandidateBatch, PlanInput, ReleaseMessage, plan_releases};
use crate::stats::{Counts, Granularity};

#[derive(Debug, Clone)]
pub struct ClaimSettings {
    /// Seconds of releases one run plans (the schedule's period).
    pub horizon_seconds: u32,
    /// Most batches one run releases.
    pub max_batches: usize,
    /// How long a claim lasts before another pacer may take the batch back.
    pub lease_for: Duration,
    /// How long a queued batch waits for its message past the instant it was due at the bridge (its release, or
    /// the bridge's last requeue) before a pacer takes it back: a message redriven to the dead-letter queue, or
    /// one that keeps failing, leaves its batch queued with nobody coming. Longer than SQS's redelivery chain
    /// (the visibility timeout times maxReceiveCount) and any backlog the queue normally carries: taking back a
    /// batch whose message is still on its way costs a stale copy (fenced), never a second delivery.
    pub queued_lease: Duration,
}

impl Default for ClaimSettings {
    fn default() -> Self {
        Self {
            horizon_seconds: 60,
            max_batches: 5_000,
            lease_for: Duration::from_secs(120),
            queued_lease: crate::domain::batch::QUEUED_LEASE,
        }
    }
}

/// What one claim did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClaimSummary {
    /// Batches locked by this claim (due within the horizon, or with an expired lease).
    pub examined: u64,
    /// Of those, batches whose previous claim had expired.
    pub reclaimed: u64,
    pub released_batches: u64,
    pub released_clicks: u64,
    /// Batches held back, by reason.
    pub deferred: BTreeMap<String, u64>,
    /// The earliest due time among the batches examined: how far behind the pacer runs.
    pub oldest_due_at: Option<DateTime<Utc>>,
    /// Campaigns whose row could not be loaded, with the reason: their batches wait for a person to fix it.
    pub invalid_campaigns: BTreeMap<String, String>,
}

/// How long after the end of its spread a queued batch's unfinished clicks count as overdue at the bridges (see
/// [`PartnerLimit::overdue`]): beyond the poll, a retry or two and the wait of a busy but healthy pipeline, whose
/// events of ten messages share their partners' send slots with every other bridge's (a few seconds each at the
/// partner's rate). Any shorter, a steady delay is taken for a backlog and the pacer releases below the rate.
pub const OVERDUE_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(20);

/// Per rated partner, the clicks of queued batches whose spread ended more than [`OVERDUE_AFTER`] before `now`
/// and that are neither delivered nor dead, owed from `now` on.
async fn overdue_clicks(
    tx: &tokio_postgres::Transaction<'_>,
    partner_ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<(PartnerId, Overdue)>, DbError> {
    let rows = tx
        .query(
            "SELECT b.partner_id, sum(GREATEST(b.click_count - f.finished, 0))::bigint AS clicks
             FROM batches b
             CROSS JOIN LATERAL (
                 SELECT count(*) FILTER (WHERE r.outcome IN ('delivered', 'dead'))
                        - count(*) FILTER (WHERE r.outcome = 'replayed') AS finished
                 FROM delivery_results r WHERE r.batch_id = b.batch_id) f
             WHERE b.state = 'queued' AND b.partner_id = ANY($1)
               AND b.release_at + make_interval(secs => b.spread_seconds) < $2
             GROUP BY b.partner_id",
            &[&partner_ids, &(now - OVERDUE_AFTER)],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let clicks = row.get::<_, i64>("clicks").max(0) as u64;
        if clicks > 0 {
            out.push((parse_partner(row.get("partner_id"))?, Overdue { clicks, since: now }));
        }
    }
    Ok(out)
}

/// What the pacer releases for a partner without a configured rate, over the rate the bridge learned for it.
pub const LEARNED_RATE_HEADROOM: f64 = 1.25;

/// Claims and reserves; returns the messages to send (in release order) and a summary.
pub async fn claim_due_batches(
    client: &mut Client,
    now: DateTime<Utc>,
    settings: &ClaimSettings,
) -> Result<(Vec<ReleaseMessage>, ClaimSummary), DbError> {
    let tx = client.transaction().await?;
    let horizon_end = now + chrono::Duration::seconds(i64::from(settings.horizon_seconds));
    let lease_until = now + chrono::Duration::from_std(settings.lease_for).unwrap_or(chrono::Duration::minutes(2));

    // Fair scan: each campaign contributes at most its share of the run, in due order, through the
    // (campaign_id, due_at) index; rows another pacer holds are skipped, not waited for. Campaigns too: a
    // campaign whose counters another pacer holds is left to that pacer, so concurrent pacers split the
    // campaigns between them instead of queueing on the same counter rows.
    let due_campaigns: Vec<String> = tx
        .query(
            "SELECT campaign_id FROM batches WHERE state IN ('pending', 'claimed') AND due_at <= $1
             UNION
             SELECT campaign_id FROM batches WHERE state = 'queued' AND lease_expires_at < $2",
            &[&horizon_end, &now],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if due_campaigns.is_empty() {
        tx.commit().await?;
        return Ok((Vec::new(), ClaimSummary::default()));
    }
    tx.execute(
        "INSERT INTO campaign_pacing (campaign_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        &[&due_campaigns],
    )
    .await?;
    let pacing_rows = tx
        .query(
            "SELECT * FROM campaign_pacing WHERE campaign_id = ANY($1) ORDER BY campaign_id FOR UPDATE SKIP LOCKED",
            &[&due_campaigns],
        )
        .await?;
    let mut states: HashMap<String, PacingState> =
        pacing_rows.iter().map(|r| (r.get::<_, String>("campaign_id"), pacing_state(r))).collect();
    let ours: Vec<&String> = states.keys().collect();
    if ours.is_empty() {
        tx.commit().await?;
        return Ok((Vec::new(), ClaimSummary::default()));
    }
    // Queued batches whose message never came (their lease ran out while no bridge was delivering them) are
    // taken back like an expired claim: they become claimed with the expired lease, and the scan below takes
    // them with a new fence, giving back what they had reserved.
    tx.execute(
        "UPDATE batches SET state = 'claimed'
         WHERE campaign_id = ANY($1) AND state = 'queued' AND lease_expires_at < $2
           AND (delivery_lease_until IS NULL OR delivery_lease_until < $2)",
        &[&ours, &now],
    )
    .await?;
    let share = (settings.max_batches as i64 / ours.len() as i64).max(50).min(settings.max_batches as i64);
    let rows = tx
        .query(
            // A replayed batch's settled clicks were delivered and counted before: only the others are released.
            "SELECT x.batch_id, x.campaign_id, x.click_count, x.due_at, x.state, x.reserved_day, x.reserved_clicks,
                    x.reserved_micros, x.partner_id, x.release_at
             FROM campaigns c
             CROSS JOIN LATERAL (
                 SELECT b.batch_id, b.campaign_id, b.click_count - b.settled_clicks AS click_count, b.due_at, b.state,
                        b.reserved_day, b.partner_id, b.release_at,
                        b.reserved_clicks, b.reserved_micros
                 FROM batches b
                 WHERE b.campaign_id = c.campaign_id
                   AND b.state IN ('pending', 'claimed') AND b.due_at <= $1
                   AND (b.state = 'pending' OR b.lease_expires_at < $2)
                 ORDER BY b.due_at, b.batch_id
                 LIMIT $3
                 FOR UPDATE OF b SKIP LOCKED
             ) x
             WHERE c.campaign_id = ANY($4)",
            &[&horizon_end, &now, &share, &ours],
        )
        .await?;
    let mut summary = ClaimSummary { examined: rows.len() as u64, ..ClaimSummary::default() };
    let mut batches = Vec::with_capacity(rows.len());
    let mut given_back = Vec::new();
    let mut taken_back: BTreeMap<StatsKey, i64> = BTreeMap::new();
    for row in &rows {
        if row.get::<_, &str>("state") == "claimed" {
            summary.reclaimed += 1;
            if let Some(released) = row.get::<_, Option<DateTime<Utc>>>("release_at") {
                for key in stats_keys(row.get("campaign_id"), row.get("partner_id"), released) {
                    *taken_back.entry(key).or_default() += i64::from(row.get::<_, i32>("click_count").max(0));
                }
            }
            let clicks = row.get::<_, i32>("reserved_clicks");
            if let Some(day) = row.get::<_, Option<NaiveDate>>("reserved_day").filter(|_| clicks > 0) {
                let micros: i64 = row.get("reserved_micros");
                given_back.push((
                    row.get::<_, i64>("batch_id"),
                    row.get::<_, String>("campaign_id"),
                    day,
                    clicks,
                    micros,
                ));
            }
        }
        batches.push(CandidateBatch {
            batch_id: row.get("batch_id"),
            campaign_id: parse_campaign(row.get("campaign_id"))?,
            clicks: row.get::<_, i32>("click_count").max(0) as u64,
            due_at: row.get("due_at"),
        });
    }
    summary.oldest_due_at = batches.iter().map(|b| b.due_at).min();
    // Each campaign's share in due order; campaigns interleaved by that order (the planner rotates turns).
    batches.sort_by_key(|b| (b.due_at, b.batch_id));

    give_back_reservations(&tx, &given_back, &mut states).await?;
    let mut given_back_states: HashMap<String, PacingState> = HashMap::new();
    for (_, campaign_id, ..) in &given_back {
        if let Some(state) = states.get(campaign_id) {
            given_back_states.insert(campaign_id.clone(), state.clone());
        }
    }

    let mut campaign_ids: Vec<String> = batches.iter().map(|b| b.campaign_id.to_string()).collect();
    campaign_ids.sort();
    campaign_ids.dedup();
    let campaign_rows = tx
        .query(&format!("SELECT {} FROM campaigns WHERE campaign_id = ANY($1)", campaigns::COLUMNS), &[&campaign_ids])
        .await?;
    // A campaign whose row cannot be loaded (a zone PostgreSQL knows and the engine does not, say) holds up only
    // its own batches: they wait for the next run, with the reason reported, while every other campaign goes.
    let mut campaign_list = Vec::with_capacity(campaign_rows.len());
    for row in &campaign_rows {
        match campaigns::from_row(row) {
            Ok(campaign) => campaign_list.push(campaign),
            Err(e) => {
                let id: String = row.get("campaign_id");
                tracing::warn!(campaign_id = id, error = %e, "campaign cannot be loaded; its batches wait");
                summary.invalid_campaigns.insert(id, e.to_string());
            }
        }
    }
    if !summary.invalid_campaigns.is_empty() {
        let held: Vec<i64> = batches
            .iter()
            .filter(|b| summary.invalid_campaigns.contains_key(b.campaign_id.as_str()))
            .map(|b| b.batch_id)
            .collect();
        batches.retain(|b| !summary.invalid_campaigns.contains_key(b.campaign_id.as_str()));
        tx.execute(
            "UPDATE batches SET state = 'pending', lease_expires_at = NULL, due_at = GREATEST(due_at, $2),
                    defer_reason = 'invalid_campaign'
             WHERE batch_id = ANY($1)",
            &[&held, &horizon_end],
        )
        .await?;
    }

    let mut partner_ids: Vec<String> = campaign_list.iter().map(|c| c.partner_id.to_string()).collect();
    partner_ids.sort();
    partner_ids.dedup();
    // A partner's per-second counter matters only when it has a rate (configured, or learned by the bridge);
    // only those are locked (in id order, so concurrent pacers cannot deadlock), so campaigns of partners
    // without one do not queue on their partner's row.
    let partner_rows = tx
        .query(
            "SELECT p.partner_id, p.rate_per_second, p.enabled, h.allowance, h.retry_after_until, h.allowance_changed_at,
                    CASE WHEN h.send_rate_learned THEN h.send_rate END AS learned_rate
             FROM partners p LEFT JOIN partner_health h USING (partner_id)
             WHERE p.partner_id = ANY($1)",
            &[&partner_ids],
        )
        .await?;
    let mut partners = HashMap::new();
    for row in &partner_rows {
        let enabled: bool = row.get("enabled");
        let configured = row.get::<_, Option<i32>>("rate_per_second").map(|r| r.max(0) as u32);
        let learned = row.get::<_, Option<f64>>("learned_rate");
        // Recovered for the time the row has had no news (see `PartnerHealth::allowance_after`).
        let allowance = row.get::<_, Option<f64>>("allowance").map_or(1.0, |allowance| {
            crate::delivery::PartnerHealth { allowance, ..Default::default() }
                .allowance_after(row.get("allowance_changed_at"), now)
        });
        let rate = match (configured, learned) {
            // What the bridge sends a configured partner at (its configured pace under the allowance, or the
            // rate it learned the partner takes when that is less), to the nearest click a second: releasing
            // more only queues clicks at the bridge, where they hold up the other campaigns of the partner.
            (Some(configured), learned) => {
                let pace = crate::delivery::pace::configured_pace(configured, allowance);
                let pace = learned.map_or(pace, |learned| learned.min(pace));
                Some((pace.round() as u32).clamp(configured.min(1), configured))
            }
            // Without a configured rate, the rate the bridge learned from the partner's throttling (if any), with
            // headroom: the bridge paces to the partner itself, probing above the learned rate, which the
            // headroom leaves clicks for.
            (None, Some(learned)) => Some((learned * LEARNED_RATE_HEADROOM).ceil().max(1.0) as u32),
            (None, None) => None,
        };
        let limit = PartnerLimit {
            // A disabled partner takes nothing: its rate is zero until a person enables it again.
            rate_per_second: if enabled { rate } else { Some(0) },
            // Already in the rate.
            allowance: 1.0,
            retry_after_until: row.get("retry_after_until"),
            second: WindowCounts::default(),
            overdue: None,
        };
        partners.insert(parse_partner(row.get("partner_id"))?, limit);
    }
    let mut limited: Vec<String> =
        partners.iter().filter(|(_, l)| l.rate_per_second.is_some()).map(|(id, _)| id.to_string()).collect();
    limited.sort();
    for (partner_id, overdue) in overdue_clicks(&tx, &limited, now).await? {
        if let Some(limit) = partners.get_mut(&partner_id) {
            limit.overdue = Some(overdue);
        }
    }
    tx.execute("INSERT INTO partner_pacing (partner_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", &[&limited])
        .await?;
    let counters = tx
        .query(
            "SELECT partner_id, second_windows FROM partner_pacing
             WHERE partner_id = ANY($1) ORDER BY partner_id FOR UPDATE",
            &[&limited],
        )
        .await?;
    for row in &counters {
        if let Some(limit) = partners.get_mut(&parse_partner(row.get("partner_id"))?) {
            limit.second = windows_from(row, "second_windows");
        }
    }

    let campaigns_input = campaign_list
        .into_iter()
        .map(|c| {
            let state = states.remove(c.campaign_id.as_str()).unwrap_or_default();
            (c.campaign_id.clone(), (c, state))
        })
        .collect::<HashMap<_, _>>();
    let plan = plan_releases(PlanInput {
        now,
        horizon_seconds: settings.horizon_seconds,
        max_batches: settings.max_batches,
        campaigns: campaigns_input,
        partners,
        batches,
    });

    // Claims: lease, new fence, the second the message becomes visible, the spread and what was reserved.
    let ids: Vec<i64> = plan.releases.iter().map(|r| r.batch_id).collect();
    let delays: Vec<i32> = plan.releases.iter().map(|r| r.delay_seconds as i32).collect();
    let spreads: Vec<i32> = plan.releases.iter().map(|r| r.spread_seconds as i32).collect();
    let reservations: Vec<Option<&(NaiveDate, crate::release::DayReservation)>> =
        plan.releases.iter().map(|r| plan.reservations.get(&r.batch_id)).collect();
    let reserved_days: Vec<Option<NaiveDate>> = reservations.iter().map(|r| r.map(|(day, _)| *day)).collect();
    let reserved_clicks: Vec<i32> =
        reservations.iter().map(|r| r.map_or(0, |(_, d)| d.clicks.min(i32::MAX as u64) as i32)).collect();
    let reserved_micros: Vec<i64> = reservations.iter().map(|r| r.map_or(0, |(_, d)| d.micros.max(0))).collect();
    let claimed = tx
        .query(
            "UPDATE batches b SET state = 'claimed', lease_expires_at = $2, fence = b.fence + 1,
                    claim_count = b.claim_count + 1, release_at = $3::timestamptz + make_interval(secs => r.delay),
                    spread_seconds = r.spread, defer_reason = NULL,
                    reserved_day = r.day, reserved_clicks = r.clicks, reserved_micros = r.micros
             FROM unnest($1::bigint[], $4::int[], $5::int[], $6::date[], $7::int[], $8::bigint[])
                  AS r(batch_id, delay, spread, day, clicks, micros)
             WHERE b.batch_id = r.batch_id
             RETURNING b.batch_id, b.fence, b.campaign_id, b.partner_id, b.click_count - b.settled_clicks AS click_count,
                       b.spread_seconds, b.release_at",
            &[&ids, &lease_until, &now, &delays, &spreads, &reserved_days, &reserved_clicks, &reserved_micros],
        )
        .await?;
    let mut messages = Vec::with_capacity(claimed.len());
    for row in &claimed {
        messages.push(ReleaseMessage {
            batch_id: row.get("batch_id"),
            fence: row.get("fence"),
            campaign_id: parse_campaign(row.get("campaign_id"))?,
            partner_id: parse_partner(row.get("partner_id"))?,
            clicks: row.get::<_, i32>("click_count").max(0) as u32,
            spread_seconds: row.get::<_, i32>("spread_seconds").max(1) as u32,
            release_at: row.get("release_at"),
        });
    }
    messages.sort_by_key(|m| (m.release_at, m.batch_id));
    summary.released_batches = messages.len() as u64;
    summary.released_clicks = messages.iter().map(|m| u64::from(m.clicks)).sum();

    let deferred_ids: Vec<i64> = plan.deferrals.iter().map(|d| d.batch_id).collect();
    let untils: Vec<DateTime<Utc>> = plan.deferrals.iter().map(|d| d.until).collect();
    let reasons: Vec<&str> = plan.deferrals.iter().map(|d| d.reason.as_str()).collect();
    for reason in &reasons {
        *summary.deferred.entry((*reason).to_owned()).or_default() += 1;
    }
    tx.execute(
        "UPDATE batches b SET state = 'pending', lease_expires_at = NULL, due_at = d.until, defer_reason = d.reason
         FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS d(batch_id, until, reason)
         WHERE b.batch_id = d.batch_id",
        &[&deferred_ids, &untils, &reasons],
    )
    .await?;

    let mut states_out = plan.states;
    for (id, state) in given_back_states {
        if let Ok(id) = parse_campaign(id) {
            states_out.entry(id).or_insert(state);
        }
    }
    write_states(&tx, &states_out, now).await?;
    // Counters of partners without a rate were not locked, and say nothing: not written.
    let counted: HashMap<PartnerId, PartnerLimit> =
        plan.partners.into_iter().filter(|(_, l)| l.rate_per_second.is_some()).collect();
    write_partners(&tx, &counted, now).await?;
    write_ledger(&tx, &plan.ledger).await?;
    // The rollups' released clicks, after the ledger rows (the bridge's passes take theirs in the same order).
    stats::take_back_released(&tx, taken_back).await?;
    let mut released: BTreeMap<StatsKey, Counts> = BTreeMap::new();
    for m in &messages {
        for key in stats_keys(m.campaign_id.to_string(), m.partner_id.to_string(), m.release_at) {
            released.entry(key).or_default().released += i64::from(m.clicks);
        }
    }
    stats::add(&tx, released).await?;
    tx.commit().await?;
    Ok((messages, summary))
}

/// After a successful send: the bridge owns these batches now, under a lease running `queued_lease` past the
/// instant each message becomes visible. Only the claim holding the same fence may do it.
pub async fn mark_queued(
    db: &impl tokio_postgres::GenericClient,
    sent: &[(i64, i64)],
    queued_lease: Duration,
) -> Result<u64, DbError> {
    let ids: Vec<i64> = sent.iter().map(|s| s.0).collect();
    let fences: Vec<i64> = sent.iter().map(|s| s.1).collect();
    let lease_seconds = queued_lease.as_secs_f64();
    Ok(db
        .execute(
            "UPDATE batches b SET state = 'queued',
                    lease_expires_at = COALESCE(b.release_at, now()) + make_interval(secs => $3)
             FROM unnest($1::bigint[], $2::bigint[]) AS s(batch_id, fence)
             WHERE b.batch_id = s.batch_id AND b.fence = s.fence AND b.state = 'claimed'",
            &[&ids, &fences, &lease_seconds],
        )
        .await?)
}

/// Gives back what earlier claims reserved for batches taken back now (claimed and never sent, or queued and
/// their message lost): the day ledger rows they added to, and the campaigns' counters (`states`, locked by this
/// claim and written back with it). The batches then carry no reservation until this claim records its own.
async fn give_back_reservations(
    tx: &tokio_postgres::Transaction<'_>,
    given_back: &[(i64, String, NaiveDate, i32, i64)],
    states: &mut HashMap<String, PacingState>,
) -> Result<(), DbError> {
    if given_back.is_empty() {
        return Ok(());
    }
    for (_, campaign_id, day, clicks, micros) in given_back {
        if let Some(state) = states.get_mut(campaign_id) {
            state.give_back(*day, (*clicks).max(0) as u64, Micros(*micros));
        }
    }
    let ids: Vec<i64> = given_back.iter().map(|g| g.0).collect();
    let campaigns: Vec<&str> = given_back.iter().map(|g| g.1.as_str()).collect();
    let days: Vec<NaiveDate> = given_back.iter().map(|g| g.2).collect();
    let clicks: Vec<i64> = given_back.iter().map(|g| i64::from(g.3)).collect();
    let micros: Vec<i64> = given_back.iter().map(|g| g.4).collect();
    // Never below what the day already counts as delivered or spent (the ledger's CHECKs): a batch whose
    // clicks straddled local midnight reserved part of them on the next day.
    tx.execute(
        "UPDATE campaign_day_ledger l
         SET released_clicks = GREATEST(l.released_clicks - g.clicks, l.delivered_clicks + l.failed_clicks),
             reserved_micros = GREATEST(l.reserved_micros - g.micros, l.spend_micros), updated_at = now()
         FROM (SELECT campaign_id, day, sum(clicks)::bigint AS clicks, sum(micros)::bigint AS micros
               FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[]) AS r(campaign_id, day, clicks, micros)
               GROUP BY campaign_id, day) g
         WHERE l.campaign_id = g.campaign_id AND l.local_day = g.day",
        &[&campaigns, &days, &clicks, &micros],
    )
    .await?;
    tx.execute(
        "UPDATE batches SET reserved_day = NULL, reserved_clicks = 0, reserved_micros = 0
         WHERE batch_id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(())
}

async fn write_states(
    tx: &tokio_postgres::Transaction<'_>,
    states: &HashMap<CampaignId, PacingState>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    if states.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut days: Vec<Option<NaiveDate>> = Vec::new();
    let mut cols: [Vec<i64>; 3] = Default::default();
    let mut windows: [Vec<serde_json::Value>; 3] = Default::default();
    for (id, s) in states {
        ids.push(id.to_string());
        days.push(s.day);
        for (col, value) in cols.iter_mut().zip([s.released_today as i64, s.reserved_today.0, s.reserved_total.0]) {
            col.push(value);
        }
        for (col, (window, counts)) in windows.iter_mut().zip([
            (RateWindow::Second, &s.second),
            (RateWindow::Minute, &s.minute),
            (RateWindow::Hour, &s.hour),
        ]) {
            col.push(windows_ahead(counts, window, now)?);
        }
    }
    tx.execute(
        "UPDATE campaign_pacing p SET local_day = s.day, released_today = s.released_today,
                reserved_today_micros = s.reserved_today, reserved_total_micros = s.reserved_total,
                second_windows = s.second_windows, minute_windows = s.minute_windows,
                hour_windows = s.hour_windows, updated_at = now()
         FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[], $6::jsonb[], $7::jsonb[],
                     $8::jsonb[])
              AS s(campaign_id, day, released_today, reserved_today, reserved_total, second_windows,
                   minute_windows, hour_windows)
         WHERE p.campaign_id = s.campaign_id",
        &[&ids, &days, &cols[0], &cols[1], &cols[2], &windows[0], &windows[1], &windows[2]],
    )
    .await?;
    Ok(())
}

/// The counts of the windows not yet ended at `now`, as stored.
fn windows_ahead(counts: &WindowCounts, window: RateWindow, now: DateTime<Utc>) -> Result<serde_json::Value, DbError> {
    let mut ahead = counts.clone();
    ahead.forget_before(window.start_of(now));
    serde_json::to_value(&ahead).map_err(|e| DbError::Invalid(format!("rate windows not encodable: {e}")))
}

fn windows_from(row: &Row, column: &str) -> WindowCounts {
    // A value this code did not write reads as no releases; the next write replaces it.
    serde_json::from_value(row.get::<_, serde_json::Value>(column)).unwrap_or_default()
}

async fn write_partners(
    tx: &tokio_postgres::Transaction<'_>,
    partners: &HashMap<PartnerId, PartnerLimit>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    if partners.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = partners.keys().map(|p| p.to_string()).collect();
    let windows =
        partners.values().map(|p| windows_ahead(&p.second, RateWindow::Second, now)).collect::<Result<Vec<_>, _>>()?;
    tx.execute(
        "UPDATE partner_pacing p SET second_windows = s.windows, updated_at = now()
         FROM unnest($1::text[], $2::jsonb[]) AS s(partner_id, windows)
         WHERE p.partner_id = s.partner_id",
        &[&ids, &windows],
    )
    .await?;
    Ok(())
}

async fn write_ledger(
    tx: &tokio_postgres::Transaction<'_>,
    ledger: &BTreeMap<(CampaignId, NaiveDate), crate::release::DayReservation>,
) -> Result<(), DbError> {
    if ledger.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = ledger.keys().map(|(c, _)| c.to_string()).collect();
    let days: Vec<NaiveDate> = ledger.keys().map(|(_, d)| *d).collect();
    let clicks: Vec<i64> = ledger.values().map(|r| r.clicks as i64).collect();
    let micros: Vec<i64> = ledger.values().map(|r| r.micros).collect();
    tx.execute(
        "INSERT INTO campaign_day_ledger (campaign_id, local_day, released_clicks, reserved_micros)
         SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[])
         ON CONFLICT (campaign_id, local_day) DO UPDATE SET
             released_clicks = campaign_day_ledger.released_clicks + EXCLUDED.released_clicks,
             reserved_micros = campaign_day_ledger.reserved_micros + EXCLUDED.reserved_micros,
             updated_at = now()",
        &[&ids, &days, &clicks, &micros],
    )
    .await?;
    Ok(())
}

fn pacing_state(row: &Row) -> PacingState {
    PacingState {
        day: row.get("local_day"),
        released_today: count(row, "released_today"),
        reserved_today: Micros(row.get("reserved_today_micros")),
        reserved_total: Micros(row.get("reserved_total_micros")),
        second: windows_from(row, "second_windows"),
        minute: windows_from(row, "minute_windows"),
        hour: windows_from(row, "hour_windows"),
    }
}

fn count(row: &Row, column: &str) -> u64 {
    row.get::<_, i64>(column).max(0) as u64
}

/// The minute and the hour bucket of a release at `at`.
fn stats_keys(campaign_id: String, partner_id: String, at: DateTime<Utc>) -> [StatsKey; 2] {
    Granularity::ALL.map(|granularity| StatsKey {
        campaign_id: campaign_id.clone(),
        partner_id: partner_id.clone(),
        granularity,
        bucket: granularity.start_of(at),
    })
}

fn parse_campaign(id: String) -> Result<CampaignId, DbError> {
    CampaignId::parse(id).map_err(|e| DbError::Invalid(e.to_string()))
}

fn parse_partner(id: String) -> Result<PartnerId, DbError> {
    PartnerId::parse(id).map_err(|e| DbError::Invalid(e.to_string()))
}
