//! When each click may go: its share of the batch's spread (the pacer reserved the campaign's rate over it), a
//! slot of the partner's shared send pace (configured or learned, every bridge reserving from one row) and, for a
//! campaign with a rate limit (per second, minute or hour), of the campaign's own send stream too (late batches of
//! one campaign delivered together keep to its limits), and the invocation's last start (no request begins that
//! could not be answered before the deadline).

use chrono::{DateTime, Utc};
use clickpacer::delivery::{CompiledPartner, ObservedHealth, Outcome, pace};
use clickpacer::domain::Partner;
use clickpacer::postgres::DbError;
use clickpacer::postgres::bridge::{self as repo, BatchLease, DeliveryRecord, PendingClick};
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::attempt::attempt_at;
use crate::{Bridge, Clock, Transport};

/// What a delivery pass sent: the records of the clicks it attempted, how many requests went out, and when the
/// clicks it did not attempt may go (a paced partner's next free slot, or the end of its Retry-After).
pub(crate) struct Sent {
    pub(crate) records: Vec<DeliveryRecord>,
    pub(crate) requests: u64,
    pub(crate) resume_at: Option<DateTime<Utc>>,
}

/// Delivers the ready clicks with bounded concurrency, every request at a send slot of the partner's shared pace
/// (see [`send_paced`]): at its configured rate under its AIMD allowance, or at the rate the bridges learn
/// together for a partner without one. A batch spread by the pacer (a campaign's rate, its pacing plan) also
/// holds each click until its share of the spread. Sending stops at a throttle (the rest wait for its
/// Retry-After).
pub(crate) async fn send_clicks<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    (partner, compiled): (&Partner, &CompiledPartner),
    lease: &BatchLease,
    ready: &[&PendingClick],
    health: &mut ObservedHealth,
    last_start: DateTime<Utc>,
) -> Sent {
    let rate = match partner.rate_per_second {
        Some(rate_per_second) => repo::PaceRate::Configured { rate_per_second, allowance: health.health.allowance },
        None => repo::PaceRate::Learned { initial: pace::initial_rate(partner.max_concurrency) },
    };
    let campaign = lease.campaign_limits.any().then_some((&lease.campaign_id, lease.campaign_limits));
    let not_before = spread_shares(lease, ready, bridge.clock.now());
    let paced = Paced { not_before: &not_before, rate, campaign, last_start };
    let (outcomes, resume_at) = send_paced(bridge, partner, compiled, ready, paced).await;
    let mut sent = Sent { records: Vec::with_capacity(outcomes.len()), requests: 0, resume_at };
    for (record, outcome) in outcomes {
        if record.http_status.is_some() || record.latency_ms.is_some() {
            sent.requests += 1;
        }
        health.observe(&outcome, record.at);
        sent.records.push(record);
    }
    sent
}

/// When each ready click may go: at its share of the batch's spread (click i of n at `i/n` of it, from the
/// release; the pacer reserved the campaign's rate, or its plan accrues, second by second over it), and never
/// closer than one share's spacing after the click before it. A click whose share passed while no pass ran
/// (its message came back late) goes at the spread's pace from now, not at once with every other late one.
/// Without a spread, all may go now.
pub(crate) fn spread_shares(lease: &BatchLease, ready: &[&PendingClick], now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    if lease.spread_seconds <= 1 {
        return vec![now; ready.len()];
    }
    let release_at = lease.release_at.unwrap_or(now);
    let spread_ms = i64::from(lease.spread_seconds) * 1000;
    let count = i64::from(lease.clicks.max(1));
    let spacing = chrono::Duration::milliseconds(spread_ms / count);
    let mut earliest = now;
    ready
        .iter()
        .map(|click| {
            let share = release_at + chrono::Duration::milliseconds(spread_ms * click.position as i64 / count);
            let at = share.max(earliest);
            earliest = at + spacing;
            at
        })
        .collect()
}

/// When a pass may send: each ready click's share of the spread (ascending), the partner's pace, the campaign's
/// own (a per-second limit), and the last instant a request may start within the invocation.
pub(crate) struct Paced<'a> {
    not_before: &'a [DateTime<Utc>],
    rate: repo::PaceRate,
    campaign: Option<repo::CampaignPace<'a>>,
    last_start: DateTime<Utc>,
}

/// Sends at the partner's send pace, reserving the slots of all the clicks due (their shares of the spread within
/// `max_slot_wait`) at once from the row every bridge shares, each request going at its slot with a permit of the
/// partner's concurrency, and reporting what the partner accepted so a throttle sets the pace to it. Only slots
/// before the pass's last start are taken: clicks whose share is further away than `max_spread_wait`, whose slot
/// is further than `max_slot_wait` (or than the invocation lasts), or that found no permit at their slot, wait
/// for the message to come back.
pub(crate) async fn send_paced<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    partner: &Partner,
    compiled: &CompiledPartner,
    ready: &[&PendingClick],
    Paced { not_before, rate, campaign, last_start }: Paced<'_>,
) -> (Vec<(DeliveryRecord, Outcome)>, Option<DateTime<Utc>>) {
    let max_wait = chrono::Duration::from_std(bridge.settings.max_spread_wait).unwrap_or_default();
    let max_slot_wait = chrono::Duration::from_std(bridge.settings.max_slot_wait).unwrap_or_default();
    let mut accepted: Vec<(DateTime<Utc>, u32)> = Vec::new();
    let mut out = Vec::with_capacity(ready.len());
    let mut resume_at = None;
    let mut next = 0;
    // Not earlier than a share already waited for (a clock that moves only by hand, in tests, still moves on).
    let mut waited = bridge.clock.now();
    while next < ready.len() {
        let now = bridge.clock.now().max(waited);
        let horizon = max_wait.min(last_start - now);
        if horizon <= chrono::Duration::zero() {
            // The invocation ends before another request could be answered: the rest go with the message.
            resume_at = Some(now);
            break;
        }
        // The clicks from `next` on whose share of the spread comes within the longest wait for a slot (the shares
        // ascend): reserved together, they go at the partner's (and the campaign's) send pace, up to that wait
        // ahead of their shares. One reservation a share would put each click behind every slot booked before
        // it, so a spread batch would take as many of those waits as it has clicks, holding its event's place.
        let lookahead = max_slot_wait;
        let due = not_before[next..].iter().take_while(|at| **at <= now + lookahead).count();
        if due == 0 {
            let at = not_before[next] - lookahead;
            if at - now > horizon {
                resume_at = Some(at - chrono::Duration::seconds(1));
                break;
            }
            tokio::time::sleep((at - now).to_std().unwrap_or_default()).await;
            waited = at;
            continue;
        }
        // All the due clicks in one reservation: passes are served in turn, each over the span of its own clicks,
        // instead of interleaving a slot at a time so that every pass in flight lasts as long as all of them
        // together (and an event as long as its slowest message).
        let want = due;
        let now = bridge.clock.now().max(waited);
        let horizon = max_wait.min(last_start - now);
        if horizon <= chrono::Duration::zero() {
            resume_at = Some(now);
            break;
        }
        let slot_horizon = horizon.min(max_slot_wait);
        let request = repo::SlotRequest { want, now, rate, horizon: slot_horizon };
        let reserved = match bridge.pool.get().await {
            Ok(mut client) => {
                repo::reserve_send_slots(&mut client, &partner.partner_id, campaign, request, &accepted).await
            }
            Err(e) => Err(DbError::from(e)),
        };
        let grant = match reserved {
            Ok(grant) => grant,
            Err(e) => {
                // Without the shared pace nothing may go: the clicks wait for the message to come back.
                tracing::warn!(partner_id = %partner.partner_id, error = %e, "send pace not reachable");
                resume_at = Some(now + chrono::Duration::seconds(1));
                break;
            }
        };
        accepted.clear();
        if grant.count == 0 {
            resume_at = Some(grant.first);
            break;
        }
        let throttled = AtomicBool::new(false);
        let starved = AtomicBool::new(false);
        let concurrency = bridge.partner_slots.for_partner(partner);
        let results: Vec<(DeliveryRecord, Outcome)> = futures::stream::iter(0..grant.count)
            .map(|k| {
                let (throttled, starved, concurrency) = (&throttled, &starved, &concurrency);
                let click = ready[next + k];
                let slot = grant.slot(k);
                async move {
                    if let Ok(wait) = (slot - bridge.clock.now()).to_std() {
                        tokio::time::sleep(wait).await;
                    }
                    // A permit of the partner's concurrency at the slot, or the request does not go: requests
                    // held up by a hung partner would go together when it recovers, more than its rate in that
                    // second. The first one without a permit stops the rest of the group; they go with the message.
                    let permit = match starved.load(Ordering::SeqCst) {
                        true => None,
                        false => tokio::time::timeout(PERMIT_GRACE, concurrency.clone().acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok),
                    };
                    let Some(_permit) = permit else {
                        starved.store(true, Ordering::SeqCst);
                        return None;
                    };
                    attempt_at(bridge, (partner, compiled), click, (slot, last_start), throttled).await
                }
            })
            .buffer_unordered(grant.count.max(1))
            .filter_map(|o| async move { o })
            .collect()
            .await;
        next += grant.count;
        let mut pause: Option<DateTime<Utc>> = None;
        for (record, outcome) in &results {
            match outcome {
                Outcome::Delivered => {
                    let answered = record.at + chrono::Duration::milliseconds(record.latency_ms.unwrap_or(0).into());
                    accepted.push((answered, 1));
                }
                Outcome::Retry { throttled: true, after, .. } => {
                    let until = after.unwrap_or(record.at + clickpacer::delivery::health::DEFAULT_THROTTLE_PAUSE);
                    pause = pause.max(Some(until));
                }
                _ => {}
            }
        }
        out.extend(results);
        if let Some(until) = pause {
            let now = bridge.clock.now();
            let report = std::mem::take(&mut accepted);
            let recorded = match bridge.pool.get().await {
                Ok(mut client) => repo::record_throttle(&mut client, &partner.partner_id, now, until, &report).await,
                Err(e) => Err(DbError::from(e)),
            };
            if let Err(e) = recorded {
                tracing::warn!(partner_id = %partner.partner_id, error = %e, "throttle not recorded in the send pace");
            }
            resume_at = Some(until);
            break;
        }
        if starved.load(Ordering::SeqCst) {
            // The partner has every request this process allows it in flight: the rest wait for the message.
            resume_at = Some(bridge.clock.now() + STARVED_RETRY);
            break;
        }
    }
    if !accepted.is_empty() {
        let report = accepted;
        let recorded = match bridge.pool.get().await {
            Ok(mut client) => repo::record_accepted(&mut client, &partner.partner_id, &report).await,
            Err(e) => Err(DbError::from(e)),
        };
        if let Err(e) = recorded {
            tracing::warn!(partner_id = %partner.partner_id, error = %e, "accepted requests not counted");
        }
    }
    // Clicks of the group skipped after a throttle or for want of a permit were neither sent nor recorded: they go
    // with the rest.
    (out, resume_at)
}

/// How long after its slot a request may still take a permit of its partner's concurrency and go.
pub(crate) const PERMIT_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// When the clicks of a pass stopped for want of a permit may be tried again.
const STARVED_RETRY: chrono::Duration = chrono::Duration::seconds(1);
