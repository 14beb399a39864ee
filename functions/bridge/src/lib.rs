//! The bridge: SQS messages from the pacer become deliveries to partner endpoints.
//!
//! For each message: take the batch if the message's fence is current (a stale or cancelled one is
//! acknowledged without delivering), skip clicks already confirmed, deliver the rest at the partner's pace with
//! a stable idempotency key, append every outcome, end the batch when every click is final, and send the
//! message back with a delay for clicks that must be tried again. Only messages that hit an infrastructure
//! failure are reported back to SQS (ReportBatchItemFailures), so one bad message does not redeliver the rest.
//!
//! The parts: `pass` takes the batch with its history and runs one delivery pass; `timing` decides when each
//! click may go (its share of the spread, the partner's shared send pace, the invocation's deadline); `attempt`
//! sends one click and turns the answer into its record and events; `requeue` sends a message back delayed;
//! `outbox` moves recorded events to the event log; [`transport`] is the HTTP client.

mod attempt;
mod outbox;
mod pass;
mod requeue;
mod timing;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use clickpacer::aws::dynamodb::DynamoEventLog;
use clickpacer::aws::sqs::SqsQueue;
use clickpacer::domain::{Partner, PartnerId};
use clickpacer::postgres::bridge::{self as repo, BatchTally};
use clickpacer::postgres::{DbError, PgPool};
use clickpacer::release::ReleaseMessage;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

pub use clickpacer::invocation::{Deadline, TimeBudget};
pub use outbox::flush_events;
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
    pub(crate) fn for_partner(&self, partner: &Partner) -> Arc<Semaphore> {
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
    /// Longest a pass waits for a send slot of its partner: slots further ahead (other bridges took the ones
    /// before) send the message back until its slot is near, so it does not hold one of the invocation's
    /// [`Self::message_concurrency`] places while other messages' partners sit idle.
    pub max_slot_wait: Duration,
    /// Messages of one event handled at once. A pass holds a database connection only for its steps that need
    /// one, not while it waits for its clicks' shares and slots, so this may exceed the pool: an event lasts
    /// about as long as its slowest message, not the sum of its slow ones.
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
            max_slot_wait: Duration::from_secs(2),
            // Of the function's 30 s timeout.
            reserve: Duration::from_secs(5),
            // An SQS event's whole batch (the template's BatchSize).
            message_concurrency: 10,
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

impl MessageOutcome {
    /// The outcome's name, as the serialised `outcome` field spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Stale { .. } => "stale",
            Self::OutOfTime { .. } => "out_of_time",
            Self::Paused { .. } => "paused",
            Self::PartnerDisabled { .. } => "partner_disabled",
            Self::Malformed { .. } => "malformed",
        }
    }

    /// One message's outcome as log fields, at debug: a line per message is detail (the event log and the
    /// delivery results hold every click's fate), and a malformed message is a warning.
    fn log(&self, message_id: &str) {
        match self {
            Self::Delivered { batch_id, tally, sent, requeued } => tracing::debug!(
                message_id,
                outcome = self.name(),
                batch_id,
                requests = sent,
                clicks = tally.clicks,
                delivered = tally.delivered,
                dead = tally.dead,
                finished = tally.finished,
                requeued,
                "message handled"
            ),
            Self::Stale { batch_id, state } => {
                tracing::debug!(
                    message_id,
                    outcome = self.name(),
                    batch_id,
                    state = state.as_deref(),
                    "message handled"
                )
            }
            Self::OutOfTime { batch_id } => {
                tracing::debug!(message_id, outcome = self.name(), batch_id, "message handled")
            }
            Self::Paused { batch_id, until } | Self::PartnerDisabled { batch_id, until } => tracing::debug!(
                message_id,
                outcome = self.name(),
                batch_id,
                until = %until,
                "message handled"
            ),
            Self::Malformed { reason } => {
                tracing::warn!(message_id, outcome = self.name(), reason, "message handled")
            }
        }
    }
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
            Ok(outcome) => outcome.log(&id),
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
    pass::deliver(bridge, &release, budget).await
}
