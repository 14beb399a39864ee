//! The pacer: every minute, claim the batches due in the coming minute, enforce every pacing rule, and release
//! them to the click queue, each delayed to its second.
//!
//! Claim and reservation commit first (one transaction, no network inside); then the messages are sent with
//! SendMessageBatch, retrying only the entries that failed; then the sent batches are marked queued. A crash
//! anywhere in between loses nothing: an unsent or unmarked batch comes back when its lease expires, with a new
//! fencing value, and the bridge ignores the stale copy.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use clickpacer::aws::AwsError;
use clickpacer::aws::sqs::{FailedEntry, MAX_BATCH_ENTRIES, OutgoingMessage, SqsQueue};
use clickpacer::postgres::pacer::{ClaimSettings, ClaimSummary, claim_due_batches, mark_queued};
use clickpacer::postgres::{DbError, PgPool};
use clickpacer::release::ReleaseMessage;
use futures::StreamExt;
use serde::Serialize;

/// Where released batches go. SQS in production; benchmarks measure Postgres alone with a sender that drops
/// messages.
pub trait ClickQueue: Send + Sync {
    fn send_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> impl Future<Output = Result<Vec<FailedEntry>, AwsError>> + Send;
}

impl ClickQueue for SqsQueue {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<FailedEntry>, AwsError> {
        SqsQueue::send_batch(self, messages).await
    }
}

pub struct Pacer<Q> {
    pub pool: PgPool,
    pub queue: Q,
    pub settings: PacerSettings,
}

#[derive(Debug, Clone)]
pub struct PacerSettings {
    pub claim: ClaimSettings,
    /// Attempts per SendMessageBatch entry before the batch is left to its lease.
    pub send_attempts: u32,
    /// SendMessageBatch calls in flight at once.
    pub send_concurrency: usize,
}

impl Default for PacerSettings {
    fn default() -> Self {
        Self { claim: ClaimSettings::default(), send_attempts: 3, send_concurrency: 8 }
    }
}

/// What one run did; logged and returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub examined: u64,
    pub reclaimed: u64,
    pub claimed: u64,
    pub released: u64,
    pub released_clicks: u64,
    /// Claimed but not sent (SQS refused them): they return when their lease expires.
    pub unsent: u64,
    /// Seconds between the earliest due time among the examined batches and now (0 when on time); deferred
    /// batches carry the time their rule relaxes, so only real backlog counts.
    pub lag_seconds: i64,
    pub deferred: BTreeMap<String, u64>,
    /// Campaigns whose configuration could not be loaded, with the reason; their batches wait.
    pub invalid_campaigns: BTreeMap<String, String>,
}

impl RunSummary {
    /// The run as log fields (queryable in CloudWatch Logs Insights): at info when it examined batches, at
    /// debug when it found nothing to do, so an idle schedule does not fill the log.
    pub fn log(&self) {
        let deferred = self.deferred.iter().map(|(reason, n)| format!("{reason}={n}")).collect::<Vec<_>>().join(" ");
        let invalid = self.invalid_campaigns.keys().cloned().collect::<Vec<_>>().join(" ");
        macro_rules! run {
            ($level:ident) => {
                tracing::$level!(
                    examined = self.examined,
                    reclaimed = self.reclaimed,
                    claimed = self.claimed,
                    released = self.released,
                    released_clicks = self.released_clicks,
                    unsent = self.unsent,
                    lag_seconds = self.lag_seconds,
                    deferred,
                    invalid_campaigns = invalid,
                    "pacer run"
                )
            };
        }
        if self.examined > 0 { run!(info) } else { run!(debug) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PacerError {
    #[error(transparent)]
    Db(#[from] DbError),
}

/// One pacer run at `now` (the injected clock: Lambda passes the wall clock, tests move it by hand).
pub async fn run_once<Q: ClickQueue>(pacer: &Pacer<Q>, now: DateTime<Utc>) -> Result<RunSummary, PacerError> {
    let (messages, claim) = {
        let mut client = pacer.pool.get().await.map_err(DbError::from)?;
        claim_due_batches(&mut client, now, &pacer.settings.claim).await?
    };
    // Crash points for the chaos runner: claimed and reserved but not sent; sent but not marked queued.
    fail::fail_point!("pacer::after_claim");
    let sent = send_all(pacer, now, &messages).await;
    fail::fail_point!("pacer::after_send");
    let client = pacer.pool.get().await.map_err(DbError::from)?;
    mark_queued(&**client, &sent, pacer.settings.claim.queued_lease).await?;
    let summary = summarise(claim, now, messages.len() as u64, sent.len() as u64);
    summary.log();
    Ok(summary)
}

fn summarise(claim: ClaimSummary, now: DateTime<Utc>, claimed: u64, sent: u64) -> RunSummary {
    RunSummary {
        lag_seconds: claim.oldest_due_at.map_or(0, |due| (now - due).num_seconds().max(0)),
        examined: claim.examined,
        reclaimed: claim.reclaimed,
        claimed,
        released: sent,
        released_clicks: claim.released_clicks,
        unsent: claimed - sent,
        deferred: claim.deferred,
        invalid_campaigns: claim.invalid_campaigns,
    }
}

/// A message to send, its release instant and what identifies the claim it carries.
type Outgoing = (OutgoingMessage, DateTime<Utc>, (i64, i64));

/// Sends every message, 10 per call, retrying only failed entries; returns the (batch, fence) pairs sent.
async fn send_all<Q: ClickQueue>(pacer: &Pacer<Q>, now: DateTime<Utc>, messages: &[ReleaseMessage]) -> Vec<(i64, i64)> {
    let outgoing: Vec<Outgoing> = messages
        .iter()
        .map(|m| {
            let body = serde_json::to_string(m).unwrap_or_default();
            (
                OutgoingMessage { id: m.batch_id.to_string(), body, delay_seconds: 0 },
                m.release_at,
                (m.batch_id, m.fence),
            )
        })
        .collect();
    let clock = SendClock { run_at: now, started: std::time::Instant::now() };
    futures::stream::iter(outgoing.chunks(MAX_BATCH_ENTRIES))
        .map(|chunk| send_chunk(&pacer.queue, chunk, pacer.settings.send_attempts, &clock))
        .buffer_unordered(pacer.settings.send_concurrency.max(1))
        .flat_map(futures::stream::iter)
        .collect()
        .await
}

const LATE_TOLERANCE_MS: i64 = 100;

/// The run's clock advanced by the time sending has taken: a run that sends for seconds (a large release, a slow
/// queue) must not add those seconds to every later message's delay.
struct SendClock {
    run_at: DateTime<Utc>,
    started: std::time::Instant,
}

impl SendClock {
    /// The delay that makes a message visible at `release_at`: SQS delays are whole seconds, so it is rounded
    /// down (visible early rather than late: the bridge waits for the message's own slots), except that up to
    /// [`LATE_TOLERANCE_MS`] late keeps the whole second.
    fn delay_for(&self, release_at: DateTime<Utc>) -> i32 {
        let now = self.run_at + chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default();
        ((release_at - now).num_milliseconds() + LATE_TOLERANCE_MS).div_euclid(1000).clamp(0, 900) as i32
    }
}

async fn send_chunk<Q: ClickQueue>(queue: &Q, chunk: &[Outgoing], attempts: u32, clock: &SendClock) -> Vec<(i64, i64)> {
    let mut pending: Vec<&Outgoing> = chunk.iter().collect();
    let mut sent = Vec::with_capacity(chunk.len());
    for attempt in 1..=attempts.max(1) {
        let batch: Vec<OutgoingMessage> = pending
            .iter()
            .map(|(m, release_at, _)| OutgoingMessage { delay_seconds: clock.delay_for(*release_at), ..m.clone() })
            .collect();
        match queue.send_batch(&batch).await {
            Ok(failed) => {
                let failed_ids: Vec<&str> = failed.iter().map(|f| f.id.as_str()).collect();
                for entry in &failed {
                    tracing::warn!(
                        batch_id = entry.id,
                        attempt,
                        sender_fault = entry.sender_fault,
                        error = entry.message,
                        "entry not sent"
                    );
                }
                let (retry, ok): (Vec<_>, Vec<_>) =
                    pending.into_iter().partition(|(m, _, _)| failed_ids.contains(&m.id.as_str()));
                sent.extend(ok.into_iter().map(|(_, _, key)| *key));
                pending = retry;
            }
            Err(e) => tracing::warn!(attempt, error = %e, "SendMessageBatch failed"),
        }
        if pending.is_empty() {
            break;
        }
    }
    sent
}

/// The run's lag as a CloudWatch metric in Embedded Metric Format: one JSON log line that CloudWatch turns into
/// `ClickPacer/PacerLagSeconds` (dimension `FunctionName`), which the template's pacer-lag alarm watches.
pub fn lag_metric_line(summary: &RunSummary, function_name: &str, now: DateTime<Utc>) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": "ClickPacer",
                "Dimensions": [["FunctionName"]],
                "Metrics": [{ "Name": "PacerLagSeconds", "Unit": "Seconds" }]
            }]
        },
        "FunctionName": function_name,
        "PacerLagSeconds": summary.lag_seconds,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_metric_is_embedded_metric_format() {
        let summary = RunSummary { lag_seconds: 42, ..RunSummary::default() };
        let line: serde_json::Value =
            serde_json::from_str(&lag_metric_line(&summary, "clickpacer-pacer", Utc::now())).unwrap();
        assert_eq!(line["PacerLagSeconds"], 42);
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], "PacerLagSeconds");
        assert_eq!(line["FunctionName"], "clickpacer-pacer");
    }
}
