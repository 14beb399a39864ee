//! One delivery pass over a batch: take the batch if the message's fence is current, load its clicks with their
//! history (attempts, finished ones), park the message when the partner is paused or disabled, send what is ready
//! (see [`crate::timing`]), record the outcomes and events in one transaction, and send the message back for
//! the clicks that must be tried again.

use chrono::{DateTime, Utc};
use clickpacer::delivery::{CompiledPartner, ObservedHealth};
use clickpacer::domain::events::{ClickEventKind, LogEntries};
use clickpacer::postgres::bridge::{self as repo, BatchClaim, BatchLease, PendingClick};
use clickpacer::postgres::{DbError, partners};
use clickpacer::release::ReleaseMessage;

use crate::attempt::{batch_event, event, record};
use crate::requeue::{queued_lease, requeue};
use crate::timing::{Sent, send_clicks};
use crate::{Bridge, BridgeError, Clock, MessageOutcome, TimeBudget, Transport};

pub(crate) async fn deliver<T: Transport, C: Clock>(
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
    // A connection only for each step that needs one, never while waiting for a click's share or slot or for a
    // partner's answer: the messages of an event are handled at once, more than the pool holds connections.
    // (Taking a connection from the pool verifies it with a round trip of its own.)
    let lease = {
        let client = bridge.pool.get().await.map_err(DbError::from)?;
        let queued_until = hold + queued_lease(bridge);
        match repo::take_batch(&**client, release.batch_id, release.fence, now, hold, queued_until).await? {
            BatchClaim::Acquired(lease) => lease,
            BatchClaim::Stale { state } => return Ok(MessageOutcome::Stale { batch_id: release.batch_id, state }),
            BatchClaim::Busy => return Err(BridgeError::Busy(release.batch_id)),
        }
    };
    let result = deliver_batch(bridge, release, &lease, now, cutoff).await;
    // Whatever happened, the next copy of the message may take the batch at once.
    if let Ok(client) = bridge.pool.get().await {
        let _ = repo::release_batch(&**client, &lease).await;
    }
    result
}

pub(crate) async fn deliver_batch<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    release: &ReleaseMessage,
    lease: &BatchLease,
    now: DateTime<Utc>,
    cutoff: DateTime<Utc>,
) -> Result<MessageOutcome, BridgeError> {
    let (partner, mut health, clicks) = {
        let client = bridge.pool.get().await.map_err(DbError::from)?;
        let partner = partners::get(&**client, &lease.partner_id).await?.ok_or_else(|| {
            DbError::Invalid(format!("batch {} names unknown partner {}", lease.batch_id, lease.partner_id))
        })?;
        let health = ObservedHealth::new(repo::partner_health(&**client, &lease.partner_id, now).await?);
        let clicks = repo::batch_clicks(&**client, lease).await?;
        if let Some(until) = health.health.retry_after_until.filter(|_| health.health.is_paused(now)) {
            // No request to this partner before its Retry-After: the whole message waits.
            requeue(bridge, &**client, release, until - now).await?;
            return Ok(MessageOutcome::Paused { batch_id: lease.batch_id, until });
        }
        if !partner.enabled {
            // Disabled by a person: the clicks wait, checked again every few minutes rather than spun through the
            // queue, and nothing is logged until they move.
            let until = now + DISABLED_PARTNER_RECHECK;
            requeue(bridge, &**client, release, DISABLED_PARTNER_RECHECK).await?;
            return Ok(MessageOutcome::PartnerDisabled { batch_id: lease.batch_id, until });
        }
        (partner, health, clicks)
    };

    // First sight of these clicks in delivery: log how they got here, once for the batch.
    let first_seen: Vec<&PendingClick> = clicks.iter().filter(|c| c.attempts == 0 && c.finished.is_none()).collect();
    let mut events = LogEntries::default();
    if let Some(ingested_at) = first_seen.iter().map(|c| c.ingested_at).min() {
        let ids = || first_seen.iter().map(|c| c.click.click_id.clone()).collect();
        events.batches.push(batch_event(lease, ClickEventKind::Ingested, ingested_at, ids()));
        events.batches.push(batch_event(lease, ClickEventKind::Released, lease.release_at.unwrap_or(now), ids()));
    }
    let ready: Vec<&PendingClick> =
        clicks.iter().filter(|c| c.finished.is_none() && c.not_before.is_none_or(|t| t <= now)).collect();

    let Sent { records, requests: sent, resume_at } = match CompiledPartner::compile(&partner) {
        Ok(compiled) => {
            // The last instant a request may start and still be answered (or time out) before the cutoff.
            let last_start = cutoff - chrono::Duration::milliseconds(partner.timeout_ms.into());
            send_clicks(bridge, (&partner, &compiled), lease, &ready, &mut health, last_start).await
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
    // Deliveries together in one batch event; a failure or a death is the click's own event, with its reason.
    let delivered: Vec<_> = records.iter().filter(|r| r.outcome == "delivered").collect();
    if let Some(last) = delivered.iter().map(|r| r.at).max() {
        let ids = delivered.iter().map(|r| r.click_id.clone()).collect();
        events.batches.push(batch_event(lease, ClickEventKind::Delivered, last, ids));
    }
    for r in records.iter().filter(|r| r.outcome != "delivered") {
        if let Some(click) = clicks.iter().find(|c| c.click.click_id == r.click_id) {
            let kind = if r.outcome == "dead" { ClickEventKind::Dead } else { ClickEventKind::Failed };
            events.clicks.push(event(lease, click, kind, r.attempt, r.at, r.error.clone()));
        }
    }

    let mut client = bridge.pool.get().await.map_err(DbError::from)?;
    let tally = {
        let changed = (!health.change.is_empty()).then_some(&health);
        repo::record_pass(&mut client, lease, repo::tally_before(&clicks), &records, changed, &events).await?
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
        requeue(bridge, &**client, release, next - now).await?;
        requeued = true;
    }
    Ok(MessageOutcome::Delivered { batch_id: lease.batch_id, tally, sent, requeued })
}

/// How long a message for a disabled partner waits before the bridge looks again: enabling the partner resumes
/// its clicks within this, and a large backlog for it costs one message per batch every few minutes.
pub(crate) const DISABLED_PARTNER_RECHECK: chrono::Duration = chrono::Duration::minutes(5);
