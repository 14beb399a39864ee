//! The bridge: SQS messages from the pacer become deliveries to partner endpoints.
//!
//! For each message: take the batch if the message's fence is current (a stale or cancelled one is
//! acknowledged without delivering), skip clicks already confirmed, deliver the rest at the partner's pace with
//! a stable idempotency key, append every outcome, end the batch when every click is final, and send the
//! message back with a delay for clicks that must be tried again. Only messages that hit an infrastructure
//! failure are reported back to SQS (ReportBatchItemFailures), so one bad message does not redeliver the rest.

pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use clickpacer::aws::dynamodb::DynamoEventLog;
use clickpacer::aws::sqs::{OutgoingMessage, SqsQueue};
use clickpacer::delivery::{
    CompiledPartner, ObservedHealth, Outcome, attempts_exhausted, backoff, classify, classify_transport,
    next_attempt_at,
};
use clickpacer::domain::events::{ClickEvent, ClickEventKind};
use clickpacer::domain::{Partner, PartnerId};
use clickpacer::postgres::bridge::{self as repo, BatchClaim, BatchLease, BatchTally, DeliveryRecord, PendingClick};
use clickpacer::postgres::{DbError, PgPool, partners};
use clickpacer::release::ReleaseMessage;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

pub use clickpacer::invocation::{Deadline, TimeBudget};
pub use transport::{HttpTransport, PartnerAnswer, Transport};

/// The time, injected so tests move it by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

pub struct Bridge<T, C> {
    pub pool: PgPool,
    pub transport: T,
    pub clock: C,
    /// The click queue: messages come back here, delayed, for clicks to try again.
    pub click_queue: SqsQueue,
    pub events: DynamoEventLog,
    pub settings: BridgeSettings,
    /// Requests in flight per partner across every message this process handles.
    pub partner_slots: PartnerSlots,
}

/// Per partner, a semaphore of its `max_concurrency` permits shared by all the messages (and events) one bridge
/// process handles, so a partner never has more requests in flight from it than it allows, however many
/// messages for it arrive together. Across processes, the event source's maximum concurrency bounds the total.
#[derive(Default)]
pub struct PartnerSlots(std::sync::Mutex<HashMap<PartnerId, (u32, Arc<Semaphore>)>>);

impl PartnerSlots {
    fn for_partner(&self, partner: &Partner) -> Arc<Semaphore> {
        let limit = partner.max_concurrency.max(1);
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = slots
            .entry(partner.partner_id.clone())
            .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))));
        if entry.0 != limit {
            // The partner's setting changed: requests already in flight finish under the old semaphore.
            *entry = (limit, Arc::new(Semaphore::new(limit as usize)));
        }
        entry.1.clone()
    }
}

#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// How long the bridge holds a batch it is delivering (beyond the function's timeout, a crashed holder's
    /// batch is free again for the redelivered message).
    pub delivery_lease: Duration,
    /// Longest the bridge waits within one invocation for a spread click's second; later ones go back delayed.
    pub max_spread_wait: Duration,
    /// Time kept before the invocation's deadline for recording the last pass, sending its message back and
    /// flushing events: no request starts later than this plus the partner's timeout before the deadline.
    pub reserve: Duration,
    /// Messages of one event handled at once.
    pub message_concurrency: usize,
    /// Events flushed to the event log per invocation, at most.
    pub outbox_flush_limit: i64,
    /// How long past the instant its message is due here a queued batch waits before a pacer may take it back
    /// (see [`clickpacer::domain::batch::QUEUED_LEASE`]); renewed on every pass and requeue.
    pub queued_lease: Duration,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        Self {
            delivery_lease: Duration::from_secs(60),
            max_spread_wait: Duration::from_secs(20),
            // Of the function's 30 s timeout.
            reserve: Duration::from_secs(5),
            message_concurrency: 4,
            // At least the events one full SQS event produces (10 messages x 100 clicks x 3 events).
            outbox_flush_limit: 5_000,
            queued_lease: clickpacer::domain::batch::QUEUED_LEASE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Aws(#[from] clickpacer::aws::AwsError),
    #[error("another delivery of batch {0} is in progress")]
    Busy(i64),
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MessageOutcome {
    Delivered {
        batch_id: i64,
        tally: BatchTally,
        sent: u64,
        requeued: bool,
    },
    /// The fence is old or the batch is finished or cancelled: acknowledged without delivering.
    Stale {
        batch_id: i64,
        state: Option<String>,
    },
    /// Too little of the invocation was left to deliver anything: the message went back to be handled at once.
    OutOfTime {
        batch_id: i64,
    },
    /// The partner asked for a pause (Retry-After): the message went back with that delay.
    Paused {
        batch_id: i64,
        until: DateTime<Utc>,
    },
    /// The partner is disabled: nothing was sent, and the message went back with a long delay.
    PartnerDisabled {
        batch_id: i64,
        until: DateTime<Utc>,
    },
    /// Not a message the bridge can read: kept with the reason (`unreadable_messages`).
    Malformed {
        reason: String,
    },
}

/// Handles one SQS event; reports only the messages that must come back.
pub async fn handle_event<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    event: SqsEvent,
    budget: &dyn TimeBudget,
) -> SqsBatchResponse {
    let results: Vec<(String, Result<MessageOutcome, BridgeError>)> = futures::stream::iter(event.records)
        .map(|message| async move {
            let id = message.message_id.clone().unwrap_or_default();
            (id, handle_message(bridge, &message, budget).await)
        })
        .buffer_unordered(bridge.settings.message_concurrency.max(1))
        .collect()
        .await;
    let mut response = SqsBatchResponse::default();
    for (id, result) in results {
        match result {
            Ok(outcome) => tracing::info!(message_id = id, outcome = ?outcome, "message handled"),
            Err(e) => {
                tracing::warn!(message_id = id, error = %e, "message returns to the queue");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
    }
    if let Err(e) = flush_events(bridge, budget).await {
        // The events stay in the outbox; the next invocation catches up.
        tracing::warn!(error = %e, "event log not reachable; events kept for later");
    }
    response
}

/// One invocation, whatever triggered it: an SQS event from the click queue is delivered ([`handle_event`], the
/// answer is the partial batch response); anything else is the schedule's, which flushes the event outbox, so
/// events a failed flush left behind do not wait for the next click.
pub async fn handle_invocation<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    event: serde_json::Value,
    budget: &dyn TimeBudget,
) -> Result<serde_json::Value, BridgeError> {
    if event.get("Records").is_some() {
        let event: SqsEvent = serde_json::from_value(event)
            .map_err(|e| DbError::Invalid(format!("not an SQS event the bridge can read: {e}")))?;
        let response = handle_event(bridge, event, budget).await;
        return serde_json::to_value(response).map_err(|e| DbError::Invalid(e.to_string()).into());
    }
    let flushed = flush_events(bridge, budget).await?;
    tracing::info!(flushed, "scheduled outbox flush");
    Ok(serde_json::json!({ "flushed": flushed }))
}

pub async fn handle_message<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    message: &SqsMessage,
    budget: &dyn TimeBudget,
) -> Result<MessageOutcome, BridgeError> {
    let body = message.body.as_deref().unwrap_or_default();
    let release: ReleaseMessage = match serde_json::from_str(body) {
        Ok(release) => release,
        Err(e) => {
            // Kept in the database, not sent to the dead-letter queue: that queue holds only SQS's redrives, which
            // can be moved back to the click queue as they are.
            let reason = format!("malformed release message: {e}");
            let client = bridge.pool.get().await.map_err(DbError::from)?;
            repo::record_unreadable(&**client, message.message_id.as_deref(), body, &reason).await?;
            return Ok(MessageOutcome::Malformed { reason });
        }
    };
    deliver(bridge, &release, budget).await
}

async fn deliver<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    release: &ReleaseMessage,
    budget: &dyn TimeBudget,
) -> Result<MessageOutcome, BridgeError> {
    let now = bridge.clock.now();
    // Messages of one event wait for each other: one handled late in the invocation may find its time gone.
    let Some(usable) = budget.remaining().checked_sub(bridge.settings.reserve) else {
        let client = bridge.pool.get().await.map_err(DbError::from)?;
        requeue(bridge, &**client, release, chrono::Duration::zero()).await?;
        return Ok(MessageOutcome::OutOfTime { batch_id: release.batch_id });
    };
    let cutoff = now + chrono::Duration::from_std(usable).unwrap_or(chrono::Duration::MAX);
    let hold = now + chrono::Duration::from_std(bridge.settings.delivery_lease).unwrap_or(chrono::Duration::minutes(1));
    // One connection for the whole message (the pool holds one per concurrent message): taking a connection
    // from the pool verifies it with a round trip of its own.
    let mut client = bridge.pool.get().await.map_err(DbError::from)?;
    let queued_until = hold + queued_lease(bridge);
    let lease = match repo::take_batch(&**client, release.batch_id, release.fence, now, hold, queued_until).await? {
        BatchClaim::Acquired(lease) => lease,
        BatchClaim::Stale { state } => return Ok(MessageOutcome::Stale { batch_id: release.batch_id, state }),
        BatchClaim::Busy => return Err(BridgeError::Busy(release.batch_id)),
    };
    let result = deliver_batch(bridge, &mut client, release, &lease, now, cutoff).await;
    // Whatever happened, the next copy of the message may take the batch at once.
    let _ = repo::release_batch(&**client, &lease).await;
    result
}

async fn deliver_batch<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    client: &mut tokio_postgres::Client,
    release: &ReleaseMessage,
    lease: &BatchLease,
    now: DateTime<Utc>,
    cutoff: DateTime<Utc>,
) -> Result<MessageOutcome, BridgeError> {
    let (partner, mut health, clicks) = {
        let client = &*client;
        let partner = partners::get(client, &lease.partner_id).await?.ok_or_else(|| {
            DbError::Invalid(format!("batch {} names unknown partner {}", lease.batch_id, lease.partner_id))
        })?;
        let health = ObservedHealth::new(repo::partner_health(client, &lease.partner_id, now).await?);
        (partner, health, repo::batch_clicks(client, lease).await?)
    };
    if let Some(until) = health.health.retry_after_until.filter(|_| health.health.is_paused(now)) {
        // No request to this partner before its Retry-After: the whole message waits.
        requeue(bridge, &*client, release, until - now).await?;
        return Ok(MessageOutcome::Paused { batch_id: lease.batch_id, until });
    }
    if !partner.enabled {
        // Disabled by a person: the clicks wait, checked again every few minutes rather than spun through the
        // queue, and nothing is logged until they move.
        let until = now + DISABLED_PARTNER_RECHECK;
        requeue(bridge, &*client, release, DISABLED_PARTNER_RECHECK).await?;
        return Ok(MessageOutcome::PartnerDisabled { batch_id: lease.batch_id, until });
    }

    let mut events = Vec::new();
    for click in clicks.iter().filter(|c| c.attempts == 0 && c.finished.is_none()) {
        // First sight of these clicks in delivery: log how they got here.
        events.push(event(lease, click, ClickEventKind::Ingested, 0, click.ingested_at, None));
        events.push(event(lease, click, ClickEventKind::Released, 0, lease.release_at.unwrap_or(now), None));
    }
    let ready: Vec<&PendingClick> =
        clicks.iter().filter(|c| c.finished.is_none() && c.not_before.is_none_or(|t| t <= now)).collect();

    let Sent { records, requests: sent, resume_at } = match CompiledPartner::compile(&partner) {
        Ok(compiled) => {
            // The last instant a request may start and still be answered (or time out) before the cutoff.
            let last_start = cutoff - chrono::Duration::milliseconds(partner.timeout_ms.into());
            send_clicks(bridge, client, (&partner, &compiled), lease, &ready, &mut health, last_start).await
        }
        Err(errors) => {
            let reason = format!("partner {} is misconfigured: {}", partner.partner_id, errors.join("; "));
            let records = ready
                .iter()
                .map(|c| record(c, c.attempts + 1, "dead", None, None, Some(reason.clone()), None, now))
                .collect();
            Sent { records, requests: 0, resume_at: None }
        }
    };
    for r in &records {
        if let Some(click) = clicks.iter().find(|c| c.click.click_id == r.click_id) {
            let kind = match r.outcome {
                "delivered" => ClickEventKind::Delivered,
                "dead" => ClickEventKind::Dead,
                _ => ClickEventKind::Failed,
            };
            events.push(event(lease, click, kind, r.attempt, r.at, r.error.clone()));
        }
    }

    let tally = {
        let changed = (!health.change.is_empty()).then_some(&health);
        repo::record_pass(client, lease, repo::tally_before(&clicks), &records, changed, &events).await?
    };
    // Dead clicks are recorded with their last error (delivery_results) and logged as failures in the event log;
    // nothing goes to the dead-letter queue, which holds only SQS's own redrives.
    // Clicks not final yet come back with the message, when the earliest of them may be tried again.
    let mut requeued = false;
    if !tally.finished {
        let delivered_now: Vec<&str> =
            records.iter().filter(|r| r.outcome != "retrying").map(|r| r.click_id.as_str()).collect();
        let next = records
            .iter()
            .filter_map(|r| r.next_attempt_at)
            .chain(
                clicks
                    .iter()
                    .filter(|c| c.finished.is_none() && !delivered_now.contains(&c.click.click_id.as_str()))
                    .map(|c| c.not_before.unwrap_or(resume_at.unwrap_or(now))),
            )
            .chain(health.health.retry_after_until)
            .min();
        // From the end of the pass, which may have lasted most of the invocation.
        let now = bridge.clock.now();
        let next = next.unwrap_or(now).max(now);
        requeue(bridge, &*client, release, next - now).await?;
        requeued = true;
    }
    Ok(MessageOutcome::Delivered { batch_id: lease.batch_id, tally, sent, requeued })
}

/// How long a message for a disabled partner waits before the bridge looks again: enabling the partner resumes
/// its clicks within this, and a large backlog for it costs one message per batch every few minutes.
const DISABLED_PARTNER_RECHECK: chrono::Duration = chrono::Duration::minutes(5);

/// What a delivery pass sent: the records of the clicks it attempted, how many requests went out, and when the
/// clicks it did not attempt may go (a paced partner's next free slot, or the end of its Retry-After).
struct Sent {
    records: Vec<DeliveryRecord>,
    requests: u64,
    resume_at: Option<DateTime<Utc>>,
}

/// Delivers the ready clicks with bounded concurrency, every request at a send slot of the partner's shared pace
/// (see [`send_paced`]): at its configured rate under its AIMD allowance, or at the rate the bridges learn
/// together for a partner without one. A batch spread by the pacer (a campaign's rate, its pacing plan) also
/// holds each click until its share of the spread. Sending stops at a throttle (the rest wait for its
/// Retry-After).
async fn send_clicks<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    client: &mut tokio_postgres::Client,
    (partner, compiled): (&Partner, &CompiledPartner),
    lease: &BatchLease,
    ready: &[&PendingClick],
    health: &mut ObservedHealth,
    last_start: DateTime<Utc>,
) -> Sent {
    let rate = match partner.rate_per_second {
        Some(rate) => {
            repo::PaceRate::Configured(clickpacer::delivery::pace::configured_pace(rate, health.health.allowance))
        }
        None => repo::PaceRate::Learned { initial: clickpacer::delivery::pace::initial_rate(partner.max_concurrency) },
    };
    let not_before = spread_shares(lease, ready, bridge.clock.now());
    let paced = Paced { not_before: &not_before, rate, last_start };
    let (outcomes, resume_at) = send_paced(bridge, client, partner, compiled, ready, paced).await;
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
fn spread_shares(lease: &BatchLease, ready: &[&PendingClick], now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
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

/// When a pass may send: each ready click's share of the spread (ascending), the pace, and the last instant a
/// request may start within the invocation.
struct Paced<'a> {
    not_before: &'a [DateTime<Utc>],
    rate: repo::PaceRate,
    last_start: DateTime<Utc>,
}

/// Sends at the partner's send pace, reserving slots in chunks of about [`PACE_CHUNK`] from the row every bridge
/// shares, and reporting what the partner accepted so a throttle sets the pace to it. Only clicks whose share of
/// the spread has come are reserved for, and only slots before the pass's last start: clicks whose share or slot
/// is further away (than `max_spread_wait`, or than the invocation lasts) wait for the message to come back.
async fn send_paced<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    client: &mut tokio_postgres::Client,
    partner: &Partner,
    compiled: &CompiledPartner,
    ready: &[&PendingClick],
    Paced { not_before, rate, last_start }: Paced<'_>,
) -> (Vec<(DeliveryRecord, Outcome)>, Option<DateTime<Utc>>) {
    let max_wait = chrono::Duration::from_std(bridge.settings.max_spread_wait).unwrap_or_default();
    let mut chunk = chunk_for(match rate {
        repo::PaceRate::Learned { initial } => initial,
        repo::PaceRate::Configured(rate) => rate,
    });
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
        // The clicks from `next` on whose share of the spread has come (the shares ascend).
        let due = not_before[next..].iter().take_while(|at| **at <= now).count();
        if due == 0 {
            let at = not_before[next];
            if at - now > horizon {
                resume_at = Some(at - chrono::Duration::seconds(1));
                break;
            }
            tokio::time::sleep((at - now).to_std().unwrap_or_default()).await;
            waited = at;
            continue;
        }
        let want = chunk.min(due);
        let reserved = repo::reserve_send_slots(client, &partner.partner_id, want, now, rate, horizon, &accepted).await;
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
        chunk = chunk_for(1.0 / grant.interval.as_seconds_f64().max(1e-6));
        let throttled = AtomicBool::new(false);
        let results: Vec<(DeliveryRecord, Outcome)> = futures::stream::iter(0..grant.count)
            .map(|k| {
                let throttled = &throttled;
                let click = ready[next + k];
                let slot = grant.slot(k);
                async move { attempt_at(bridge, (partner, compiled), click, (slot, last_start), throttled).await }
            })
            .buffer_unordered(partner.max_concurrency.max(1) as usize)
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
            if let Err(e) = repo::record_throttle(client, &partner.partner_id, now, until, &report).await {
                tracing::warn!(partner_id = %partner.partner_id, error = %e, "throttle not recorded in the send pace");
            }
            resume_at = Some(until);
            break;
        }
    }
    if !accepted.is_empty() {
        let report = accepted;
        if let Err(e) = repo::record_accepted(client, &partner.partner_id, &report).await {
            tracing::warn!(partner_id = %partner.partner_id, error = %e, "accepted requests not counted");
        }
    }
    // Clicks of the chunk skipped after a throttle were neither sent nor recorded: they go with the rest.
    (out, resume_at)
}

/// About this much sending per reservation: short enough that concurrent bridges interleave into one even stream
/// and a throttle stops everyone quickly, long enough that a fast partner costs one reservation per message.
const PACE_CHUNK: std::time::Duration = std::time::Duration::from_millis(50);

fn chunk_for(rate: f64) -> usize {
    (rate * PACE_CHUNK.as_secs_f64()).round().max(1.0) as usize
}

/// One attempt at `slot` (waits for it), unless a throttle in the same group of requests came first or the
/// partner's concurrency kept it waiting past the pass's last start.
async fn attempt_at<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    (partner, compiled): (&Partner, &CompiledPartner),
    click: &PendingClick,
    (slot, last_start): (DateTime<Utc>, DateTime<Utc>),
    throttled: &AtomicBool,
) -> Option<(DeliveryRecord, Outcome)> {
    if let Ok(wait) = (slot - bridge.clock.now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    let slots = bridge.partner_slots.for_partner(partner);
    let _in_flight = slots.acquire().await.ok()?;
    if throttled.load(Ordering::SeqCst) || bridge.clock.now() > last_start {
        return None;
    }
    let at = bridge.clock.now();
    let attempt = click.attempts + 1;
    let timeout = Duration::from_millis(u64::from(partner.timeout_ms));
    let (outcome, status, latency) = match compiled.render(&click.click, at) {
        Err(e) => (Outcome::Permanent(format!("cannot render the request: {e}")), None, None),
        Ok(request) => match bridge.transport.send(&request, timeout).await {
            Ok(answer) => (
                classify(
                    answer.status,
                    &answer.body,
                    answer.retry_after.as_deref(),
                    partner.success_body_match.as_deref(),
                    bridge.clock.now(),
                ),
                Some(answer.status),
                Some(answer.latency),
            ),
            Err((error, latency)) => (classify_transport(&error), None, Some(latency)),
        },
    };
    // Crash point for the chaos runner: the partner answered (and may have accepted), nothing is recorded yet;
    // armed with a probability, it also stops a delivery pass after k of its n clicks.
    fail::fail_point!("bridge::after_partner_answer");
    if matches!(outcome, Outcome::Retry { throttled: true, .. }) {
        throttled.store(true, Ordering::SeqCst);
    }
    let latency_ms = latency.map(|l| l.as_millis().min(u128::from(u32::MAX)) as u32);
    let record = match &outcome {
        Outcome::Delivered => record(click, attempt, "delivered", status, latency_ms, None, None, at),
        Outcome::Permanent(reason) => {
            record(click, attempt, "dead", status, latency_ms, Some(reason.clone()), None, at)
        }
        Outcome::Retry { after, reason, ambiguous, .. } => {
            if attempts_exhausted(attempt - click.attempts_before_replay, partner.max_attempts) {
                let reason = format!("{reason} (attempt {attempt} of {})", partner.max_attempts);
                record(click, attempt, "dead", status, latency_ms, Some(reason), None, at)
            } else {
                let wait = backoff(attempt, partner.retry_base_ms, partner.retry_max_ms, fastrand::f64());
                let next = Some(next_attempt_at(at, wait, *after));
                let mut r = record(click, attempt, "retrying", status, latency_ms, Some(reason.clone()), next, at);
                r.ambiguous = *ambiguous;
                r
            }
        }
    };
    Some((record, outcome))
}

#[allow(clippy::too_many_arguments)]
fn record(
    click: &PendingClick,
    attempt: u32,
    outcome: &'static str,
    http_status: Option<u16>,
    latency_ms: Option<u32>,
    error: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> DeliveryRecord {
    DeliveryRecord {
        click_id: click.click.click_id.clone(),
        attempt,
        outcome,
        http_status,
        latency_ms,
        error,
        next_attempt_at,
        ambiguous: false,
        at,
    }
}

fn event(
    lease: &BatchLease,
    click: &PendingClick,
    kind: ClickEventKind,
    attempt: u32,
    at: DateTime<Utc>,
    detail: Option<String>,
) -> ClickEvent {
    ClickEvent {
        campaign_id: lease.campaign_id.clone(),
        partner_id: lease.partner_id.clone(),
        click_id: click.click.click_id.clone(),
        batch_id: lease.batch_id,
        kind,
        attempt,
        at,
        detail,
    }
}

/// Sends the release message back to the click queue with a delay (SQS allows up to 15 minutes; a longer wait
/// comes back and is delayed again).
async fn requeue<T, C: Clock>(
    bridge: &Bridge<T, C>,
    db: &impl tokio_postgres::GenericClient,
    release: &ReleaseMessage,
    delay: chrono::Duration,
) -> Result<(), BridgeError> {
    // Rounded up: a pause of 0.4 s must not come back at once and spin through the queue until it ends.
    let seconds = ((delay.num_milliseconds() + 999) / 1000).clamp(0, 900) as i32;
    let body = serde_json::to_string(release).unwrap_or_default();
    send_one(&bridge.click_queue, &release.batch_id.to_string(), body, seconds).await?;
    // The copy is on its way: the batch's queued lease covers its delay. Should this fail, the lease from this
    // pass still runs, and a pacer taking the batch back early only makes the copy stale.
    let until = bridge.clock.now() + chrono::Duration::seconds(seconds.into()) + queued_lease(bridge);
    if let Err(e) = repo::extend_queued_lease(db, release.batch_id, release.fence, until).await {
        tracing::warn!(batch_id = release.batch_id, error = %e, "queued lease not extended");
    }
    Ok(())
}

fn queued_lease<T, C>(bridge: &Bridge<T, C>) -> chrono::Duration {
    chrono::Duration::from_std(bridge.settings.queued_lease).unwrap_or(chrono::Duration::hours(1))
}

async fn send_one(queue: &SqsQueue, id: &str, body: String, delay_seconds: i32) -> Result<(), BridgeError> {
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(80).collect();
    let failed = queue.send_batch(&[OutgoingMessage { id, body, delay_seconds }]).await?;
    match failed.first() {
        None => Ok(()),
        Some(f) => {
            Err(clickpacer::aws::AwsError { operation: "sqs SendMessageBatch", message: f.message.clone() }.into())
        }
    }
}

/// Time kept for one outbox write to the event log (a few DynamoDB batch writes with their retries).
const FLUSH_WRITE_TIME: Duration = Duration::from_secs(1);

/// Outbox rows taken per event-log write.
const OUTBOX_ROWS_PER_FLUSH: i64 = 5;

/// Moves queued events from the outbox to the event log, while the invocation has time for another write; what
/// is left or fails stays for the next invocation.
pub async fn flush_events<T, C>(bridge: &Bridge<T, C>, budget: &dyn TimeBudget) -> Result<u64, BridgeError> {
    let mut flushed = 0u64;
    while flushed < bridge.settings.outbox_flush_limit as u64 && budget.remaining() > FLUSH_WRITE_TIME {
        let mut client = bridge.pool.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        // A row holds one pass's events (up to a few hundred).
        let rows = repo::take_outbox(&tx, OUTBOX_ROWS_PER_FLUSH).await?;
        if rows.is_empty() {
            return Ok(flushed);
        }
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        let events: Vec<ClickEvent> = rows.into_iter().flat_map(|(_, events)| events).collect();
        bridge.events.put_batch(&events).await?;
        repo::delete_outbox(&tx, &ids).await?;
        tx.commit().await.map_err(DbError::from)?;
        flushed += events.len() as u64;
    }
    Ok(flushed)
}
