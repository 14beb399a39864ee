//! One attempt at one click: wait for its slot and a concurrency permit, send, classify the answer, and turn it
//! into the delivery record and events the pass stores (retry with backoff, dead with the reason).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickpacer::delivery::{
    CompiledPartner, Outcome, attempts_exhausted, backoff, classify, classify_transport, next_attempt_at,
};
use clickpacer::domain::Partner;
use clickpacer::domain::events::{BatchEvent, ClickEvent, ClickEventKind};
use clickpacer::postgres::bridge::{BatchLease, DeliveryRecord, PendingClick};

use crate::{Bridge, Clock, Transport};

/// One attempt at `slot` (waits for it; the caller holds a permit of the partner's concurrency for it), unless a
/// throttle in the same group of requests came first or the slot is past the pass's last start.
pub(crate) async fn attempt_at<T: Transport, C: Clock>(
    bridge: &Bridge<T, C>,
    (partner, compiled): (&Partner, &CompiledPartner),
    click: &PendingClick,
    (slot, last_start): (DateTime<Utc>, DateTime<Utc>),
    throttled: &AtomicBool,
) -> Option<(DeliveryRecord, Outcome)> {
    if let Ok(wait) = (slot - bridge.clock.now()).to_std() {
        tokio::time::sleep(wait).await;
    }
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
pub(crate) fn record(
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

pub(crate) fn event(
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

pub(crate) fn batch_event(
    lease: &BatchLease,
    kind: ClickEventKind,
    at: DateTime<Utc>,
    clicks: Vec<clickpacer::domain::ClickId>,
) -> BatchEvent {
    BatchEvent {
        campaign_id: lease.campaign_id.clone(),
        partner_id: lease.partner_id.clone(),
        batch_id: lease.batch_id,
        kind,
        at,
        clicks,
    }
}
